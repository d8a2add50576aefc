"""The client's realtime connection alone (wire.ClientConnection): bytes and times in, events,
audio and frames out. No socket, no clock: every deadline and reconnect decision on chosen times."""

from __future__ import annotations

import pytest

from athos_load.wire import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    CallState,
    ClientConnection,
    Ended,
    ErrorCode,
    FrameReader,
    Ready,
    Reconnected,
    Speaker,
    Speaking,
    close_payload,
    parse_client_message,
    server_frame,
)

READY = Ready("Pat", "athos_call_1", "rt_1")


def text(message: object) -> bytes:
    return server_frame(OPCODE_TEXT, message.serialize().encode())  # type: ignore[attr-defined]


def sent(conn: ClientConnection) -> list[tuple[int, bytes]]:
    """What the client wrote, as a server reads it (masked frames, unmasked)."""
    return FrameReader(masked=True).feed(b"".join(conn.data_to_send()))


def joined(now: float = 1.0) -> ClientConnection:
    conn = ClientConnection(token="tok", drill_key="d", idle_timeout=10.0, resume_timeout=3.0)
    conn.connect(0.0)
    conn.connection_made(0.0)
    conn.receive_data(text(READY), now)
    conn.events_received()
    conn.data_to_send()
    return conn


def names(conn: ClientConnection) -> list[str]:
    return ["audio" if isinstance(item, bytes) else item.name for item, _ in conn.events_received()]


def test_a_read_gives_events_and_audio_in_order_stamped_when_read():
    conn = ClientConnection(token="tok", drill_key="d")
    conn.connect(0.0)
    conn.connection_made(0.0)
    (opcode, join), = sent(conn)  # fmt: skip
    assert opcode == OPCODE_TEXT and parse_client_message(join).token == "tok"
    voice = b"\x01\x02" * 320
    conn.receive_data(
        text(READY) + text(Speaking(Speaker.PERSONA, True)) + server_frame(OPCODE_BINARY, voice)[:5], 0.25
    )
    conn.receive_data(server_frame(OPCODE_BINARY, voice)[5:], 0.27)  # the rest of a frame, a read later
    got = conn.events_received()
    assert [(getattr(i, "name", i), at) for i, at in got] == [
        ("connecting", 0.0), ("ready", 0.25), ("personaSpeaking", 0.25), (voice, 0.27),
    ]  # fmt: skip
    assert conn.audio_frames_received == 1 and conn.state is CallState.READY


def test_a_ping_is_answered_and_a_resumable_close_is_echoed_and_asks_for_a_resume():
    conn = joined()
    conn.receive_data(server_frame(OPCODE_PING, b"hi"), 2.0)
    assert sent(conn) == [(OPCODE_PONG, b"hi")] and not conn.connection_done
    conn.receive_data(server_frame(OPCODE_CLOSE, close_payload(1012)), 3.0)
    assert sent(conn) == [(OPCODE_CLOSE, close_payload(1012))]
    assert names(conn) == ["reconnecting"] and conn.connection_done and conn.wants_resume


def test_a_normal_close_during_a_call_is_not_a_drop():
    conn = joined()
    conn.receive_data(server_frame(OPCODE_CLOSE, close_payload(1000)), 2.0)
    assert names(conn) == ["error", "ended"] and conn.connection_done and not conn.wants_resume
    assert conn.protocol.error.code == ErrorCode.RECONNECT_FAILED


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (server_frame(OPCODE_CLOSE, b"\x03"), "malformed Close"),
        (b"\x82\x80\x00\x00\x00\x00", "must not mask"),  # a masked frame from a server
        (bytes([0x82, 127]) + (1 << 62).to_bytes(8, "big"), "over the limit"),
    ],
)
def test_a_broken_stream_fails_the_call_with_remote_protocol(data, says):
    conn = joined()
    conn.receive_data(data, 2.0)
    assert names(conn) == ["error", "ended"] and conn.connection_done
    assert conn.protocol.error.code == ErrorCode.REMOTE_PROTOCOL and says in conn.protocol.error.message


def test_a_silent_call_is_a_drop_at_its_idle_deadline_and_only_then():
    conn = joined(now=1.0)
    assert conn.next_deadline() == pytest.approx(11.0)
    conn.tick(10.9)
    assert names(conn) == [] and not conn.connection_done
    conn.receive_data(text(Speaking(Speaker.USER, True)), 5.0)  # heard: the deadline moves
    conn.tick(11.0)
    assert names(conn) == ["userSpeaking"]
    conn.tick(15.0)
    assert names(conn) == ["reconnecting"] and conn.connection_done and conn.wants_resume


def test_an_unanswered_resume_fails_at_its_deadline_and_an_answered_one_does_not():
    conn = joined()
    conn.receive_eof(2.0)
    assert names(conn) == ["reconnecting"] and conn.wants_resume
    conn.connection_made(2.5)
    conn.resume(2.5)
    (_, resume), = sent(conn)  # fmt: skip
    assert parse_client_message(resume).resume_token == "rt_1"
    assert conn.next_deadline() == pytest.approx(5.5)
    conn.tick(5.5)
    assert names(conn) == ["error", "ended"] and conn.protocol.error.code == ErrorCode.RECONNECT_FAILED

    conn = joined()
    conn.receive_eof(2.0)
    conn.connection_made(2.5)
    conn.resume(2.5)
    conn.receive_data(text(Reconnected("athos_call_1")), 2.6)
    assert names(conn) == ["reconnecting", "reconnected"] and conn.state is CallState.READY
    assert conn.next_deadline() == pytest.approx(12.6)  # the idle deadline again, not the resume's


def test_a_socket_gone_before_ready_fails_the_join_and_ended_ends_the_socket():
    conn = ClientConnection(token="tok", drill_key="d")
    conn.connect(0.0)
    conn.connection_made(0.0)
    conn.receive_eof(0.1)
    assert names(conn) == ["connecting", "error"] and conn.state is CallState.FAILED and not conn.wants_resume
    conn = joined()
    conn.receive_data(text(Ended("athos_call_1", 3.0, "persona")), 4.0)
    assert names(conn) == ["ended"] and conn.finished and conn.connection_done
