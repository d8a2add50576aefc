"""A real RoleplaySession against a hostile server (``tests/support/hostile.py``, a subprocess on
127.0.0.1). Each misbehaviour of a peer must end the call with an error code (docs/protocol.md §2.2,
§6), within TIME_BOUND seconds and, for the ones that offer the client unbounded data, with this
process's peak RSS growing by less than RSS_BOUND; the client must not hang, reconnect to the peer
or die silently, and it must answer a Close frame with a Close of the same code."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import gevent
import pytest
from support.fakes import make_scenario
from support.hostile import HostilePeer
from support.memory import PeakRss

from athos_load.api import AthosApi, ScoreBoard
from athos_load.call import Call, CallSettings, ScoreDrain
from athos_load.metrics import Metrics
from athos_load.pacer import AudioPacer
from athos_load.session import ReconnectPolicy, RoleplaySession, SessionError, SessionEvent
from athos_load.wire import SDK_EVENTS, AudioFormat, ErrorCode

TIME_BOUND = 5.0  # seconds from connect() to the end of the call; each limit trips within one read
# A client that buffered what these peers offer would grow by 50 MB (one text frame) to 128 MiB
# (what the streaming scripts send before giving up), so this bound tells the two apart.
RSS_BOUND = 50 << 20


@dataclass
class Outcome:
    session: RoleplaySession
    events: list[SessionEvent]
    connect_error: ErrorCode | str | None  # what connect() raised, if it did
    ended: bool  # the session finished by itself within TIME_BOUND
    seconds: float
    rss_growth: int

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.events]

    @property
    def error(self) -> tuple[ErrorCode | str, str] | None:
        err = self.session.last_error
        return None if err is None else (err.code, err.message)


def new_session(peer: HostilePeer) -> RoleplaySession:
    # Short deadlines and one quick resume attempt: a client that wrongly treated a hostile peer as
    # a transient drop shows up as a second connection in the report, not as a slow test.
    return RoleplaySession.create(
        token="tok_hostile",
        drill_key="ma-full-sale",
        url=peer.url,
        connect_timeout=TIME_BOUND,
        read_timeout=0.5,
        hangup_timeout=2.0,
        reconnect=ReconnectPolicy(max_attempts=1, initial_delay=0.05),
    )


def run_call(peer: HostilePeer) -> Outcome:
    """Connect and wait, up to TIME_BOUND, for the peer's misbehaviour to end the call."""
    session = new_session(peer)
    events: list[SessionEvent] = []
    for name in SDK_EVENTS:
        session.on(name, events.append)
    rss = PeakRss()
    started = time.monotonic()
    connect_error = None
    try:
        session.connect()
    except SessionError as exc:
        connect_error = exc.code
    ended = session.wait_ended(TIME_BOUND)
    outcome = Outcome(session, events, connect_error, ended, time.monotonic() - started, rss.growth())
    session.close()
    print(f"{peer.report.stem}: {outcome.error} in {outcome.seconds:.3f}s, peak RSS +{outcome.rss_growth >> 10} KiB")
    return outcome


def assert_failed_mid_call(outcome: Outcome, peer: HostilePeer, code: ErrorCode, says: str) -> None:
    """The call was up, the peer broke it: ``error`` (code) then ``ended`` (reason error), in time,
    the socket closed by the client and no attempt to resume with that peer."""
    assert outcome.ended and outcome.seconds < TIME_BOUND
    assert outcome.connect_error is None
    assert outcome.names == ["connecting", "ready", "error", "ended"]
    assert outcome.error is not None
    assert outcome.error[0] == code and says in outcome.error[1]
    assert outcome.events[2].payload == {"code": code, "message": outcome.error[1]}
    assert outcome.session.end_reason == "error"  # not counted as a completed hang-up
    peer.wait_for("eof")  # the client let go of the connection
    assert [e["event"] for e in peer.events()].count("connection") == 1


# -- sizes: refused from the header, before anything is buffered -----------------------------------


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("huge-header", f"a frame of {1 << 62} bytes, over the limit"),
        ("endless-fragments", "a fragmented message past the limit"),
        ("empty-fragments", "a fragmented message past the limit"),  # 2-byte frames: no payload to count
        ("big-text", "a frame of 50000000 bytes, over the limit"),
    ],
)
def test_an_oversized_frame_or_message_is_refused_in_bounded_memory(hostile, script, says):
    peer = hostile(script)
    outcome = run_call(peer)
    assert_failed_mid_call(outcome, peer, ErrorCode.REMOTE_PROTOCOL, says)
    assert outcome.rss_growth < RSS_BOUND, f"peak RSS grew by {outcome.rss_growth >> 20} MiB"
    streamed = peer.wait_for("streamed")
    assert streamed["cut_off"] and streamed["bytes"] < 32 << 20  # the client hung up on it early


# -- RFC 6455 framing rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("big-control", "a control frame must be final and at most 125 bytes"),
        ("reserved-bits", "reserved bits"),
        ("reserved-opcode", "reserved opcode 0x3"),
        ("orphan-continuation", "no message to continue"),
        ("interleaved", "a new message before the fragmented one ended"),
        ("masked-frame", "must not mask"),
    ],
)
def test_a_frame_breaking_rfc_6455_is_refused(hostile, script, says):
    peer = hostile(script)
    assert_failed_mid_call(run_call(peer), peer, ErrorCode.REMOTE_PROTOCOL, says)


# -- messages: unreadable, or out of place -------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("bad-json", "not JSON"),
        ("deep-json", "nested too deeply"),
        ("huge-number", "durationSec"),  # an ended with a 400-digit duration must not end the call as sent
        ("ready-twice", "not allowed in state ready"),
    ],
)
def test_an_unreadable_or_misplaced_message_fails_the_call(hostile, script, says):
    peer = hostile(script)
    assert_failed_mid_call(run_call(peer), peer, ErrorCode.REMOTE_PROTOCOL, says)


def test_ended_before_ready_refuses_the_join(hostile):
    peer = hostile("ended-before-ready")
    outcome = run_call(peer)
    assert outcome.connect_error == ErrorCode.REMOTE_PROTOCOL and outcome.seconds < TIME_BOUND
    assert outcome.names == ["connecting", "error"]  # no call was made, so none ends
    assert outcome.error is not None and "not allowed in state connecting" in outcome.error[1]
    peer.wait_for("eof")
    assert [e["event"] for e in peer.events()].count("connection") == 1


def test_an_unknown_event_type_is_counted_and_the_call_goes_on(hostile):
    peer = hostile("unknown-event")
    session = new_session(peer)
    events: list[SessionEvent] = []
    for name in SDK_EVENTS:
        session.on(name, events.append)
    session.connect()
    deadline = time.monotonic() + TIME_BOUND
    while [e.name for e in events].count("userSpeaking") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # the turn the peer sends after its unknown message
    assert session.unknown_messages == 1
    session.hangup(timeout=TIME_BOUND)
    assert [e.name for e in events] == ["connecting", "ready", "userSpeaking", "userSpeaking", "ended"]
    assert session.last_error is None and session.end_reason == "hangup"
    assert peer.wait_for("text", type="hangup")


# -- the close handshake ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 4000])
def test_a_servers_close_is_answered_with_the_same_code(hostile, code):
    peer = hostile(f"close-{code}")
    outcome = run_call(peer)
    # Neither code is a transient close (§2.5): a final close during the call ends it.
    assert_failed_mid_call(outcome, peer, ErrorCode.RECONNECT_FAILED, "not resumable")
    answer = peer.wait_for("close")
    assert answer["code"] == code  # RFC 6455 §5.5.1: the Close is echoed with the peer's code


@pytest.mark.parametrize("script", ["close-1006", "close-short"])
def test_a_malformed_close_is_a_protocol_error_not_a_drop(hostile, script):
    """1006 only describes a connection lost without a Close (RFC 6455 §7.4.1): sent in a frame it
    must not pass for a transient drop, nor be echoed; a 1-byte body holds no code (§5.5.1)."""
    peer = hostile(script)
    assert_failed_mid_call(run_call(peer), peer, ErrorCode.REMOTE_PROTOCOL, "malformed Close")
    assert peer.wait_for("close")["code"] == 1002  # failed as a protocol error (§7.4.1)


@pytest.mark.parametrize(
    ("script", "outcome", "code"),
    [("ended-with-ready", "completed", None), ("failed-with-ready", "failed", "internal_error")],
)
def test_a_call_that_ends_in_the_read_of_its_ready_connected_and_is_counted_by_its_end(hostile, script, outcome, code):
    """Ready, then ended (or error, ended) in one read: the platform did connect, so connect_ready
    is timed, the call counts as its end says, and it is no setup failure."""
    peer = hostile(script)
    metrics = Metrics()
    settings = CallSettings(
        api=AthosApi(peer.http_url, "key", timeout=TIME_BOUND), ws_url=peer.url, board=ScoreBoard(),
        metrics=metrics, pacer=AudioPacer(), audio=AudioFormat(), drain=ScoreDrain(), score_timeout=0.05,
        connect_timeout=TIME_BOUND,
    )  # fmt: skip
    reports: list[dict] = []
    call = Call(settings, make_scenario(), lambda **kw: reports.append(kw), random.Random(1))
    with gevent.Timeout(3 * TIME_BOUND):
        call.run()
    assert call.outcome is not None and call.outcome.value == outcome
    assert metrics.timing("connect_ready").count == 1
    assert metrics.total("athos_setup_failed") == 0
    summary = metrics.summary()
    assert summary["calls"][outcome] == 1 and summary["errors"] == ({} if code is None else {code: 1})
    failed = [r["name"] for r in reports if r["exception"] is not None and r["name"] != "end_to_score"]
    assert failed == ([] if code is None else ["call"])  # no score here: that one is missing
