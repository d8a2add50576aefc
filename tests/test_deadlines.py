"""Every wait has a deadline and every bad answer a code: real clients (``AthosApi``,
``RoleplaySession``, ``Call``) against a misbehaving platform (``tests/support/hostile.py``, a
subprocess on 127.0.0.1). An answer or a handshake trickled a byte at a time must fail at the
deadline, not when the peer is done; a platform that never confirms a hang-up or a resume must not
hold the call; an oversized or non-JSON answer is the platform's error with a code, never a
traceback."""

from __future__ import annotations

import functools
import random
import time
from typing import Any

import gevent
import pytest
from support.hostile import HostilePeer
from support.memory import PeakRss

from athos_load.api import ApiError, AthosApi, ScoreBoard, ScorePoller
from athos_load.audio import Clip
from athos_load.call import Call, CallSettings, ScoreDrain
from athos_load.metrics import Metrics, Outcome
from athos_load.pacer import AudioPacer
from athos_load.scenario import HangupPolicy, Scenario, Turn
from athos_load.session import ReconnectPolicy, RoleplaySession, SessionError, SessionEvent
from athos_load.wire import SDK_EVENTS, AudioFormat, ErrorCode

DEADLINE = 1.5  # the deadline under test; a trickled answer would take the peer 25 s or more
SLACK = 2.0  # what may pass after the deadline on a loaded machine before the client has let go
RSS_BOUND = 50 << 20  # a client that read the 300 MB answer would grow by far more


def elapsed_since(started: float) -> float:
    return time.monotonic() - started


# -- REST: the whole answer within the deadline, a size limit, a code for anything else -------------


def test_a_rest_answer_trickled_a_byte_at_a_time_fails_at_the_deadline(hostile):
    peer = hostile("trickle-http")
    api = AthosApi(peer.http_url, "key", timeout=DEADLINE)
    started = time.monotonic()
    with pytest.raises(ApiError) as raised:
        api.mint_token("rep-1")
    took = elapsed_since(started)
    assert raised.value.code == ErrorCode.REQUEST_TIMEOUT, raised.value
    assert DEADLINE * 0.9 <= took < DEADLINE + SLACK, took
    assert peer.wait_for("trickled", timeout=10)["cut_off"]  # the client hung up on it
    api.close()


def test_an_oversized_rest_answer_is_refused_without_reading_it(hostile):
    peer = hostile("huge-body")
    api = AthosApi(peer.http_url, "key", timeout=10.0)
    rss = PeakRss()
    with pytest.raises(ApiError) as raised:
        api.mint_token("rep-1")
    assert raised.value.code == ErrorCode.REMOTE_PROTOCOL and "over" in raised.value.message
    assert rss.growth() < RSS_BOUND, f"peak RSS grew by {rss.growth() >> 20} MiB"
    api.close()


@pytest.mark.parametrize(("script", "status"), [("html-ok", 200), ("html-error", 502)])
def test_an_html_page_where_json_belongs_is_a_remote_protocol_error(hostile, script, status):
    peer = hostile(script)
    api = AthosApi(peer.http_url, "key", timeout=5.0)
    for request in (lambda: api.mint_token("rep-1"), lambda: api.list_calls(since=0.0, limit=1)):
        with pytest.raises(ApiError) as raised:
            request()
        assert raised.value.code == ErrorCode.REMOTE_PROTOCOL, raised.value
        assert raised.value.status in (None, status) and "/v1/" in raised.value.message
    api.close()


def test_the_score_poller_survives_any_answer_and_backs_off(hostile):
    peer = hostile("html-ok")
    poller = ScorePoller(AthosApi(peer.http_url, "key", timeout=2.0), ScoreBoard(), interval=0.05, max_interval=0.4)
    poller.start()
    try:
        gevent.sleep(1.5)
        assert poller.alive
        errors = poller.counts["errors"]
        # every answer was counted, and the interval doubled up to its cap: about 0.05+0.1+0.2+0.4+0.4
        # seconds for five polls in 1.5 s, not the thirty a fixed 50 ms interval would make
        assert 3 <= errors <= 10, poller.counts
        assert poller.counts[str(ErrorCode.REMOTE_PROTOCOL)] == errors
    finally:
        poller.stop()


# -- the realtime connection ----------------------------------------------------------------------------


def session_for(peer: HostilePeer, **options: Any) -> tuple[RoleplaySession, list[SessionEvent]]:
    session = RoleplaySession.create(
        token="tok",
        drill_key="drill",
        url=peer.url,
        connect_timeout=DEADLINE,
        read_timeout=0.2,
        hangup_timeout=DEADLINE,
        reconnect=ReconnectPolicy(max_attempts=1, initial_delay=0.05),
        **options,
    )
    events: list[SessionEvent] = []
    for name in SDK_EVENTS:
        session.on(name, events.append)
    return session, events


def test_a_websocket_handshake_trickled_a_byte_at_a_time_fails_within_the_connect_timeout(hostile):
    peer = hostile("trickle-handshake")
    session, events = session_for(peer)
    started = time.monotonic()
    with pytest.raises(SessionError) as raised:
        session.connect()
    took = elapsed_since(started)
    assert raised.value.code == ErrorCode.CONNECT_TIMEOUT, raised.value
    assert took < DEADLINE + SLACK, took
    assert [e.name for e in events] == ["connecting", "error"]
    assert peer.wait_for("trickled", timeout=10)["cut_off"]


def test_a_hangup_never_acknowledged_fails_the_call_with_a_code_of_its_own(hostile):
    peer = hostile("silent-hangup")
    session, events = session_for(peer)
    session.connect()
    started = time.monotonic()
    session.hangup()
    assert DEADLINE * 0.9 <= elapsed_since(started) < DEADLINE + SLACK
    assert [e.name for e in events] == ["connecting", "ready", "error", "ended"]
    assert events[2].payload["code"] == ErrorCode.HANGUP_TIMEOUT
    assert session.end_reason == "error"  # not a completed hang-up
    assert peer.wait_for("text", type="hangup")  # it was sent; the platform kept quiet


def test_a_resume_never_answered_fails_the_reconnect_within_the_connect_timeout(hostile):
    peer = hostile("unanswered-resume")
    session, events = session_for(peer, idle_timeout=60.0)
    session.connect()
    assert session.wait_ended(DEADLINE + 0.5 + SLACK), [e.name for e in events]
    assert [e.name for e in events] == ["connecting", "ready", "reconnecting", "error", "ended"]
    assert events[3].payload["code"] == ErrorCode.RECONNECT_FAILED
    assert peer.wait_for("text", type="resume")
    session.close()


# -- a whole call: nothing escapes, everything is counted ---------------------------------------------


def one_call(peer: HostilePeer, **session_options: Any) -> tuple[Call, Metrics, list[dict[str, Any]]]:
    fmt = AudioFormat()
    clip = Clip(None, fmt, (bytes(fmt.frame_bytes),) * 10, ())
    scenario = Scenario(
        name="s", drill="drill", turns=(Turn(clip, "silence"),), think_time=(0.0, 0.0),
        hangup=HangupPolicy.IMMEDIATELY, reply_timeout=1.0, max_call_seconds=10.0,
    )  # fmt: skip
    metrics = Metrics()
    api = AthosApi(peer.http_url, "key", timeout=DEADLINE)
    settings = CallSettings(
        api=api, ws_url=peer.url, board=ScoreBoard(), metrics=metrics, pacer=AudioPacer(), audio=fmt,
        drain=ScoreDrain(), score_timeout=1.0, connect_timeout=DEADLINE,
        transport=functools.partial(RoleplaySession, hangup_timeout=DEADLINE, read_timeout=0.2),
    )  # fmt: skip
    reports: list[dict[str, Any]] = []
    call = Call(settings, scenario, lambda **kw: reports.append(kw), random.Random(1))
    with gevent.Timeout(3 * DEADLINE + 2 * SLACK):
        call.run()
    api.close()
    return call, metrics, reports


@pytest.mark.parametrize(
    ("script", "code", "failed_step"),
    [
        ("html-ok", ErrorCode.REMOTE_PROTOCOL, "token_mint"),
        ("trickle-http", ErrorCode.REQUEST_TIMEOUT, "token_mint"),
        ("silent-hangup", ErrorCode.HANGUP_TIMEOUT, "call"),
    ],
)
def test_a_call_against_a_misbehaving_platform_fails_with_its_code_once(hostile, script, code, failed_step):
    call, metrics, reports = one_call(hostile(script))
    summary = metrics.summary()
    assert call.outcome is Outcome.FAILED
    assert summary["calls"]["started"] == summary["calls"]["failed"] == 1
    assert summary["errors"] == {code: 1}  # counted once, under its code: not "internal"
    failures = [r for r in reports if r["exception"] is not None]
    assert [r["name"] for r in failures][0] == failed_step
    assert {str(r["exception"]) for r in failures} == {code}
