"""The sans-I/O protocol, without a network: messages, the lifecycle table, webhook signatures."""

import json

import pytest

from athos_load.wire import (
    TRANSITIONS,
    ApiErrorBody,
    AudioFormat,
    CallRecord,
    CallState,
    CallStatus,
    ClientProtocol,
    ConnectionLost,
    Ended,
    Error,
    ErrorCode,
    Hangup,
    Join,
    LocalProtocolError,
    MintRequest,
    MintResponse,
    Ready,
    Reconnected,
    RedeemRequest,
    Redemption,
    RemoteProtocolError,
    Resume,
    Role,
    ScoredEvent,
    Segment,
    SignatureError,
    Speaker,
    Speaking,
    advance,
    error_body,
    parse_call,
    parse_client_message,
    parse_error_body,
    parse_server_message,
    realtime_url,
    sign_webhook,
    verify_webhook,
)

READY = Ready("Dana", "athos_call_1", "rt_1").serialize()


def names(proto: ClientProtocol) -> list[str]:
    return [e.name for e in proto.events_received()]


def joined() -> ClientProtocol:
    proto = ClientProtocol(token="tok", drill_key="ma-full-sale")
    proto.connect(0.0)
    proto.receive_text(READY, 0.5)
    proto.events_received()
    proto.data_to_send()
    return proto


# -- messages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [Join("t", "ma-full-sale", AudioFormat(sample_rate=48000, frame_ms=10)), Resume("rt", "athos_call_x"), Hangup()],
)
def test_client_messages_round_trip(message):
    assert parse_client_message(message.serialize()) == message


@pytest.mark.parametrize(
    "message",
    [
        Ready("Dana", "athos_call_1", "rt"),
        Speaking(Speaker.PERSONA, True),
        Speaking(Speaker.USER, False),
        Reconnected("athos_call_1"),
        Ended("athos_call_1", 12.345, "persona"),
        Error(ErrorCode.TOKEN_EXPIRED, "expired"),
    ],
)
def test_server_messages_round_trip(message):
    assert parse_server_message(message.serialize()) == message


def test_event_payloads_are_the_seeds():
    assert Ready("Dana", "c", "r").payload() == {"persona": {"name": "Dana"}}
    assert Speaking(Speaker.PERSONA, True).payload() == {"speaking": True}
    assert Speaking(Speaker.USER, False).payload() == {"speaking": False}
    assert Ended("athos_call_1", 3.5).payload() == {"callId": "athos_call_1", "durationSec": 3.5}
    assert Error(ErrorCode.UNKNOWN_CALL, "gone").payload() == {"code": "unknown_call", "message": "gone"}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"type":"join","drillKey":"d"}', "token"),
        ('{"type":"join","token":1,"drillKey":"d"}', "token"),
        ('{"type":"join","token":"t","drillKey":"d","audio":{"encoding":"pcm16le"}}', "audio.sampleRate"),
        ('{"type":"resume","callId":"c"}', "resumeToken"),
        ('{"type":"dance"}', "type"),
        ("[1]", "object"),
        ("not json", "JSON"),
    ],
)
def test_bad_client_messages_name_the_field(text, field):
    with pytest.raises(RemoteProtocolError, match=field):
        parse_client_message(text)


def test_bool_is_not_a_number():
    with pytest.raises(RemoteProtocolError, match="durationSec"):
        parse_server_message('{"type":"ended","callId":"c","durationSec":true}')


def test_unknown_error_code_is_kept_as_a_string():
    err = parse_server_message('{"type":"error","code":"new_code","message":"m"}')
    assert err.code == "new_code" and err.payload()["code"] == "new_code"


def test_audio_format_checks_each_field():
    AudioFormat().check()
    assert AudioFormat().frame_bytes == 640
    for bad, field in [
        (AudioFormat(encoding="opus"), "encoding"),
        (AudioFormat(sample_rate=11025), "sampleRate"),
        (AudioFormat(channels=2), "channels"),
        (AudioFormat(frame_ms=7), "frameMs"),
    ]:
        with pytest.raises(ValueError, match=field):
            bad.check()


def test_rest_bodies_round_trip():
    assert MintRequest.parse(MintRequest("rep-1").serialize()) == MintRequest("rep-1")
    assert MintRequest.parse(MintRequest(agent_id="athos_agent_1").serialize()) == MintRequest(agent_id="athos_agent_1")
    for bad in ("{}", '{"agentId": "a", "platformAgentId": "b"}', '{"platformAgentId": ""}'):
        with pytest.raises(RemoteProtocolError):
            MintRequest.parse(bad)
    redemption = Redemption("ws://h/v1/realtime", "tkt_1", "athos_call_1", "Dana", "ext_1")
    assert Redemption.parse(redemption.serialize()) == redemption
    assert RedeemRequest.parse(RedeemRequest("ma-full-sale").serialize()) == RedeemRequest("ma-full-sale")
    mint = MintResponse("tok", 1_800_000_000.123)
    assert MintResponse.parse(mint.serialize()) == mint
    record = CallRecord(
        "athos_call_1",
        CallStatus.SCORED,
        "d",
        12.0,
        77.5,
        1_800_000_000.0,
        1_800_000_002.5,
        (Segment("rep", 0.5, 1.5, "hi"), Segment("persona", 2.0, 3.0, "hello")),
    )
    assert parse_call(json.dumps(record.to_wire())) == record
    err = parse_error_body(error_body(ErrorCode.CALL_NOT_FOUND, "gone", "req_1"))
    assert err == ApiErrorBody(ErrorCode.CALL_NOT_FOUND, "gone", "req_1")
    assert parse_error_body(b"<html>").code == ErrorCode.REMOTE_PROTOCOL


# -- the lifecycle ----------------------------------------------------------------------------------


def test_full_call_lifecycle():
    proto = ClientProtocol(token="tok", drill_key="ma-full-sale")
    proto.connect(0.0)
    assert names(proto) == ["connecting"]
    assert json.loads(proto.data_to_send()[0])["type"] == "join"
    assert not proto.can_send_audio
    proto.receive_text(READY, 0.2)
    assert names(proto) == ["ready"] and proto.can_send_audio and proto.call_id == "athos_call_1"
    for message in (
        Speaking(Speaker.USER, True),
        Speaking(Speaker.USER, False),
        Speaking(Speaker.PERSONA, True),
        Speaking(Speaker.PERSONA, False),
    ):
        proto.receive_text(message.serialize(), 1.0)
    assert names(proto) == ["userSpeaking"] * 2 + ["personaSpeaking"] * 2
    proto.hangup(5.0)
    assert proto.data_to_send() == [Hangup().serialize()]
    proto.receive_text(Ended("athos_call_1", 4.8).serialize(), 5.1)
    assert names(proto) == ["ended"] and proto.finished


def test_drop_resume_and_reconnected():
    proto = joined()
    proto.connection_lost(1.0, resumable=True)
    assert names(proto) == ["reconnecting"] and not proto.can_send_audio
    proto.connection_lost(1.1, resumable=True)  # a failed reconnect attempt: no second event
    assert names(proto) == []
    proto.resume(1.2)
    assert parse_client_message(proto.data_to_send()[0]) == Resume("rt_1", "athos_call_1")
    proto.receive_text(Reconnected("athos_call_1").serialize(), 1.3)
    assert names(proto) == ["reconnected"] and proto.can_send_audio


def test_refused_resume_is_error_then_ended():
    proto = joined()
    proto.connection_lost(1.0)
    proto.resume(1.1)
    proto.receive_text(Error(ErrorCode.UNKNOWN_CALL, "no such call").serialize(), 2.5)
    events = proto.events_received()
    assert [e.name for e in events] == ["reconnecting", "error", "ended"]
    assert events[1].code == ErrorCode.UNKNOWN_CALL
    assert events[2].call_id == "athos_call_1" and events[2].duration_sec == pytest.approx(2.0)


def test_join_refused_fails_without_ended():
    proto = ClientProtocol(token="tok", drill_key="d")
    proto.connect(0.0)
    proto.receive_text(Error(ErrorCode.TOKEN_REDEEMED, "used").serialize(), 0.1)
    assert names(proto) == ["connecting", "error"] and proto.state is CallState.FAILED


def test_client_gives_up_reconnecting():
    proto = joined()
    proto.connection_lost(1.0)
    proto.fail(9.0, ErrorCode.RECONNECT_FAILED, "no route")
    assert names(proto) == ["reconnecting", "error", "ended"] and proto.end_reason == "error"


def test_garbage_from_server_fails_the_call_without_raising():
    proto = joined()
    proto.receive_text(b"\xff\xfe", 1.0)
    events = proto.events_received()
    assert [e.name for e in events] == ["error", "ended"] and events[0].code == ErrorCode.REMOTE_PROTOCOL


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # was RecursionError, killing the reader
        ('{"type":"ended","callId":"c","durationSec":' + "9" * 400 + "}", "durationSec: number out of range"),
        ('{"type":"ended","callId":"c","durationSec":1e999}', "durationSec: not a finite number"),
        ('{"type":"ended","callId":"c","durationSec":1,"reason":["x"]}', "reason: expected str"),
        ('{"type":["ready"]}', "type: expected str"),
    ],
)
def test_hostile_server_messages_are_an_error_code_on_the_call(text, says):
    proto = joined()
    proto.receive_text(text, 1.0)
    events = proto.events_received()
    assert [e.name for e in events] == ["error", "ended"] and events[0].code == ErrorCode.REMOTE_PROTOCOL
    assert says in events[0].message and proto.finished


def test_an_unknown_message_type_is_counted_and_ignored():
    proto = joined()
    proto.receive_text('{"type":"sentiment","value":0.3}', 1.0)  # a newer platform build's event
    proto.receive_text(Speaking(Speaker.PERSONA, True).serialize(), 1.1)
    assert [e.name for e in proto.events_received()] == ["personaSpeaking"]
    assert proto.unknown_messages == 1 and not proto.finished and proto.can_send_audio


def test_out_of_place_server_message_is_a_remote_error():
    proto = ClientProtocol(token="t", drill_key="d")
    proto.connect(0.0)
    proto.receive_text(Speaking(Speaker.PERSONA, True).serialize(), 0.1)  # before ready
    assert [e.name for e in proto.events_received()] == ["connecting", "error"]
    assert proto.error.code == ErrorCode.REMOTE_PROTOCOL and "connecting" in proto.error.message


def test_commands_in_the_wrong_state_raise_local_errors():
    proto = ClientProtocol(token="t", drill_key="d")
    with pytest.raises(LocalProtocolError, match="hangup.*idle"):
        proto.hangup(0.0)
    proto.connect(0.0)
    with pytest.raises(LocalProtocolError, match="join.*connecting"):
        proto.connect(0.0)


def test_transition_table_is_keyed_by_message_classes():
    assert {happening for _, happening in TRANSITIONS} <= {
        Join,
        Resume,
        Hangup,
        Ready,
        Speaking,
        Reconnected,
        Ended,
        Error,
        ConnectionLost,
    }
    # every state but the terminal ones has a way out
    sources = {state for state, _ in TRANSITIONS}
    assert sources == set(CallState) - {CallState.ENDED, CallState.FAILED}


def test_the_server_steps_the_same_table():
    state = advance(CallState.IDLE, Join, Role.SERVER)  # received
    state = advance(state, Ready, Role.SERVER)  # sent
    assert state is CallState.READY
    assert advance(state, ConnectionLost, Role.SERVER) is CallState.RECONNECTING
    assert advance(CallState.RECONNECTING, Resume, Role.SERVER) is CallState.RECONNECTING
    # a client that hangs up before joining broke the protocol: remote, from the server's side
    with pytest.raises(RemoteProtocolError, match="server: 'hangup' not allowed in state idle"):
        advance(CallState.IDLE, Hangup, Role.SERVER)
    # a server that says ready twice broke it itself
    with pytest.raises(LocalProtocolError, match="server: 'ready' not allowed in state ready"):
        advance(CallState.READY, Ready, Role.SERVER)
    # and a client that receives it counts it as the server's
    with pytest.raises(RemoteProtocolError, match="client: 'ready'"):
        advance(CallState.READY, Ready, Role.CLIENT)


# -- webhook signatures ------------------------------------------------------------------------------


def test_webhook_signature_verifies_and_rejects():
    body = ScoredEvent("athos_call_1", True, 1_800_000_000.0).serialize().encode()
    header = sign_webhook("whsec", 1_800_000_000, body)
    assert verify_webhook("whsec", header, body, now=1_800_000_010) == 1_800_000_000
    cases = [
        ("other-secret", header, body, 1_800_000_010, "bad_signature"),
        ("whsec", header, body + b" ", 1_800_000_010, "bad_signature"),
        ("whsec", header, body, 1_800_000_000 + 301, "stale"),
        ("whsec", None, body, 1_800_000_010, "missing"),
        ("whsec", "v1=abc", body, 1_800_000_010, "malformed"),
    ]
    for secret, hdr, data, now, reason in cases:
        with pytest.raises(SignatureError) as info:
            verify_webhook(secret, hdr, data, now=now)
        assert info.value.reason == reason
    assert ScoredEvent.parse(body).call_id == "athos_call_1"


def test_the_realtime_url_follows_the_host():
    assert realtime_url("http://athos.example:8080") == "ws://athos.example:8080/v1/realtime"
    assert realtime_url("https://athos.example/") == "wss://athos.example/v1/realtime"
    assert realtime_url("http://[::1]:9/") == "ws://[::1]:9/v1/realtime"
