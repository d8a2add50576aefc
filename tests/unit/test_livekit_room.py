"""The LiveKit transport's translation alone (livekit.RoomCall): recorded sequences of a room's
signals, as the livekit SDK reports them, in; the SDK's events with their times out. This is how
the LiveKit transport is tested here: no LiveKit server runs on these machines (README)."""

from __future__ import annotations

import pytest

from athos_load.livekit import (
    NETWORK_LOST,
    ActiveSpeakers,
    Joined,
    JoinFailed,
    MicrophoneLive,
    RoomCall,
    RoomDisconnected,
    RoomReconnected,
    RoomReconnecting,
)
from athos_load.wire import Ended, Ready, Speaker, Speaking


def play(signals: list[tuple[float, object]], *, hangup_at: float | None = None, ticks: tuple[float, ...] = ()):
    call = RoomCall("athos_call_lk", "Dana")
    call.connect(0.0)
    timeline = [(at, "signal", s) for at, s in signals] + [(t, "tick", None) for t in ticks]
    if hangup_at is not None:
        timeline.append((hangup_at, "hangup", None))
    for at, kind, signal in sorted(timeline, key=lambda x: x[0]):
        if kind == "signal":
            call.receive(signal, at)
        elif kind == "tick":
            call.tick(at)
        else:
            call.hangup(at)
    return call, call.events_received()


def test_a_call_in_a_room_reads_as_the_sdks_events():
    call, events = play(
        [
            (0.30, Joined()),
            (0.42, MicrophoneLive()),
            (1.00, ActiveSpeakers(local=True, remote=False)),
            (1.05, ActiveSpeakers(local=True, remote=False)),  # the same speakers again: no event
            (2.10, ActiveSpeakers(local=False, remote=False)),
            (2.60, ActiveSpeakers(local=False, remote=True)),
            (4.00, ActiveSpeakers(local=True, remote=True)),  # the rep talks over the persona
            (4.30, ActiveSpeakers(local=True, remote=False)),
            (9.70, RoomDisconnected("CLIENT_INITIATED")),
        ],
        hangup_at=9.6,
    )
    assert [(e.name, e.payload(), at) for e, at in events] == [
        ("connecting", None, 0.0),
        ("ready", {"persona": {"name": "Dana"}}, 0.42),
        ("userSpeaking", {"speaking": True}, 1.00),
        ("userSpeaking", {"speaking": False}, 2.10),
        ("personaSpeaking", {"speaking": True}, 2.60),
        ("userSpeaking", {"speaking": True}, 4.00),
        ("personaSpeaking", {"speaking": False}, 4.30),
        ("ended", {"callId": "athos_call_lk", "durationSec": 9.0}, 9.70),
    ]
    assert isinstance(events[1][0], Ready) and events[1][0].call_id == "athos_call_lk"
    assert call.finished and call.end_reason == "hangup" and call.error is None


def test_a_drop_recovered_in_time_is_reconnecting_then_reconnected():
    call, events = play(
        [(0.3, Joined()), (0.4, MicrophoneLive()), (5.0, RoomReconnecting()), (5.2, RoomReconnecting()),
         (7.5, RoomReconnected())],
        ticks=(6.0, 34.0),
    )  # fmt: skip
    assert [(e.name, at) for e, at in events][2:] == [("reconnecting", 5.0), ("reconnected", 7.5)]
    assert call.next_deadline() is None and not call.finished and not call.wants_leave


def test_a_recovery_past_thirty_seconds_is_network_lost_and_the_room_is_left():
    call = RoomCall("athos_call_lk", "Dana")
    call.connect(0.0)
    for at, signal in ((0.3, Joined()), (0.4, MicrophoneLive()), (5.0, RoomReconnecting())):
        call.receive(signal, at)
    assert call.next_deadline() == pytest.approx(35.0)
    call.tick(34.9)
    assert not call.wants_leave
    call.tick(35.0)
    assert call.wants_leave and call.error is not None and call.error.code == NETWORK_LOST
    call.receive(RoomDisconnected("CLIENT_INITIATED"), 35.1)  # the driver left the room
    names = [(e.name, at) for e, at in call.events_received()]
    assert names[-3:] == [("reconnecting", 5.0), ("error", 35.0), ("ended", 35.1)]
    assert call.end_reason == "error"  # a failed call, though the room was left by the rep's side


@pytest.mark.parametrize(
    ("reason", "end_reason", "code"),
    [("ROOM_DELETED", "max_duration", None), ("SERVER_SHUTDOWN", "error", "connect_failed"),
     ("SIGNAL_CLOSE", "error", "connect_failed")],
)  # fmt: skip
def test_the_platform_closing_the_room_ends_the_call_by_its_reason(reason, end_reason, code):
    call, events = play([(0.3, Joined()), (0.4, MicrophoneLive()), (60.0, RoomDisconnected(reason))])
    assert call.end_reason == end_reason and isinstance(events[-1][0], Ended)
    assert (call.error.code if call.error else None) == code


def test_a_refused_join_is_an_error_and_no_ended():
    call, events = play([(0.2, JoinFailed("could not establish signal connection"))])
    assert [e.name for e, _ in events] == ["connecting", "error"] and call.finished and not call.ready
    call.receive(ActiveSpeakers(local=False, remote=True), 0.5)  # nothing after the end
    assert call.events_received() == [] and Speaking(Speaker.PERSONA, True).name == "personaSpeaking"
