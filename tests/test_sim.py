"""The simulator as a real target: started as a subprocess, driven over loopback sockets.

Raw ``websocket-client`` and ``requests`` only (no athos-load client code), so these tests pin the
wire behaviour of the simulator itself. Bounds are functional and generous; no timing assertions
beyond them.
"""

import asyncio
import http.server
import json
import random
import threading
import time

import numpy as np
import pytest
import requests
import websocket

from athos_load.sim.config import Degradation, Distribution, SimConfig
from athos_load.sim.connection import Connection
from athos_load.sim.counters import Counters
from athos_load.wire import (
    CALL_ID_PREFIX,
    PATH_AGENTS,
    PATH_CALLS,
    PATH_REDEEM,
    PATH_SESSION,
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    WEBHOOK_ID_HEADER,
    AudioFormat,
    FrameReader,
    MintRequest,
    MintResponse,
    Redemption,
    RegisterAgentRequest,
    ScoredEvent,
    parse_call,
    parse_call_list,
    parse_close,
    verify_webhook,
)

FMT = AudioFormat()
FRAME_S = FMT.frame_seconds
_t = np.arange(FMT.sample_rate) / FMT.sample_rate
TONE = (0.5 * 32767 * np.sin(2 * np.pi * 300 * _t)).astype("<i2").tobytes()
TONE_FRAMES = [TONE[i : i + FMT.frame_bytes] for i in range(0, len(TONE), FMT.frame_bytes)]  # 1 s, 50 frames
SILENCE = bytes(FMT.frame_bytes)


# -- helpers ---------------------------------------------------------------------------------------


def session_token(sim):
    """Register a new rep and mint a session token for it (``POST /agents``, ``POST /session``)."""
    rep = f"rep-{random.getrandbits(48):x}"
    r = requests.post(sim.http_url + PATH_AGENTS, data=RegisterAgentRequest("Test", "Rep", rep).serialize(),
                      headers=sim.headers, timeout=5)  # fmt: skip
    assert r.status_code == 201, r.text
    r = requests.post(sim.http_url + PATH_SESSION, data=MintRequest(rep).serialize(), headers=sim.headers, timeout=5)
    assert r.status_code == 200, r.text
    return MintResponse.parse(r.content).token


def redeem(sim, token, drill="ma-full-sale"):
    return requests.post(sim.http_url + PATH_REDEEM, json={"drillKey": drill}, timeout=5,
                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def mint(sim, drill="ma-full-sale"):
    """A connection ticket for ``drill``: a session token minted and redeemed, as the SDK's connect() does."""
    r = redeem(sim, session_token(sim), drill)
    assert r.status_code == 200, r.text
    return Redemption.parse(r.content).connection_ticket


def rest_error(response):
    return response.json()["error"]["code"]


class Peer:
    """A test client: one WebSocket, the text messages it got (with arrival times) and its audio."""

    def __init__(self, sim):
        self.ws = websocket.create_connection(sim.ws_url, timeout=5)
        self.messages = []  # (monotonic arrival, parsed JSON)
        self.audio_frames = 0
        self.close_code = None  # set on a close frame
        self.lost = False  # the connection died without a close frame (1006)

    def send(self, obj):
        self.ws.send(json.dumps(obj))

    def types(self):
        return [m["type"] + (f":{m['speaking']}" if "speaking" in m else "") for _, m in self.messages]

    def pump(self, until):
        """Read whatever arrives until the monotonic deadline ``until`` (or the connection ends)."""
        while self.close_code is None and not self.lost:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self.ws.settimeout(max(remaining, 0.001))
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                return
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                self.lost = True
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self.messages.append((time.monotonic(), json.loads(frame.data)))
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self.audio_frames += 1
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                self.close_code = int.from_bytes(frame.data[:2], "big")

    def wait_for(self, kind, timeout=5.0, **fields):
        """The first message of type ``kind`` (with these field values) not seen before; fails on timeout."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for _, msg in self.messages[seen:]:
                if msg["type"] == kind and all(msg.get(k) == v for k, v in fields.items()):
                    return msg
            seen = len(self.messages)
            if time.monotonic() >= deadline or self.close_code is not None or self.lost:
                raise AssertionError(f"no {kind} {fields} within {timeout}s; got {self.types()}")
            self.pump(min(deadline, time.monotonic() + 0.05))

    def wait_closed(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.close_code is None and not self.lost and time.monotonic() < deadline:
            self.pump(deadline)
        return "lost" if self.lost else self.close_code

    def stream(self, frames):
        """Send frames paced in real time (absolute deadlines), reading in between."""
        start = time.monotonic()
        for k, frame in enumerate(frames):
            self.pump(start + k * FRAME_S)
            self.ws.send_binary(frame)

    def close(self):
        self.ws.close(timeout=1)


def join(sim, token, drill="ma-full-sale", audio=None):
    peer = Peer(sim)
    msg = {"type": "join", "token": token, "drillKey": drill}
    if audio is not None:
        msg["audio"] = audio
    peer.send(msg)
    return peer


def expect_refusal(peer, code):
    """An ``error`` with ``code``, then close 1008."""
    error = peer.wait_for("error")
    assert error["code"] == code, error
    assert error["message"]
    assert peer.wait_closed() == 1008


def poll(fn, timeout=10.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def truth_events(sim, event, timeout=5.0, **fields):
    """Truth-log lines of ``event`` matching ``fields``, waiting for at least one (flushes are 0.5 s apart)."""

    def matching():
        return [e for e in sim.truth() if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]

    return poll(matching, timeout)


def get_call(sim, call_id):
    """The call's detail, once it is scored (before that it is not readable)."""

    def scored():
        r = requests.get(f"{sim.http_url}{PATH_CALLS}/{call_id}", headers=sim.headers, timeout=5)
        return r.status_code == 200 and parse_call(r.content)

    return poll(scored, timeout=10)


class WebhookReceiver:
    """A loopback HTTP server recording every POST; answers 500 to the first ``fail_first`` of them."""

    def __init__(self, fail_first=0):
        self.received = []  # (status answered, headers, body)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(outer.received) < fail_first else 200
                outer.received.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/athos"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# -- units: distributions and the frame tap --------------------------------------------------------


def test_distribution_specs():
    assert str(Distribution.parse("fixed:0.2")) == "fixed:0.2"
    assert Distribution.parse("uniform:1,3") == Distribution("uniform", 1.0, 3.0)
    lognormal = Distribution.parse("lognormal:0.15,0.4")
    rng = random.Random(1)
    samples = np.array([lognormal.sample(rng) for _ in range(20000)])
    assert np.percentile(samples, 50) == pytest.approx(0.15, rel=0.05)
    assert np.percentile(samples, 95) == pytest.approx(0.4, rel=0.07)
    assert 1.0 <= Distribution.parse("uniform:1,3").sample(rng) <= 3.0
    for bad in ("fixed", "fixed:-1", "fixed:x", "uniform:3,1", "lognormal:0.4,0.15", "normal:1,2", "lognormal:0,1"):
        with pytest.raises(ValueError):
            Distribution.parse(bad)


def test_degradation_grows_with_time_steps_at_its_minute_and_leaks_with_calls():
    d = Degradation(growth=0.5, step_at=600.0, step_factor=1.5, leak=0.2)
    assert d.factor(0.0, 0) == 1.0
    assert d.factor(3600.0, 0) == pytest.approx(1.5 * 1.5)  # +50% an hour, and the step since minute 10
    assert d.factor(599.0, 0) == pytest.approx(1 + 0.5 * 599 / 3600)
    assert d.factor(0.0, 5000) == pytest.approx(2.0)  # +20% per 1000 calls served
    assert Degradation.parse_step("600:1.5") == (600.0, 1.5)
    for bad in ("600", "x:1", "600:0", "-1:2", "600:nan"):
        with pytest.raises(ValueError, match="AT:FACTOR"):
            Degradation.parse_step(bad)
    with pytest.raises(SystemExit):
        SimConfig.from_args(["--latency-step", "soon"])


def test_a_latency_step_slows_the_platform_from_its_time_on(sim_factory):
    sim = sim_factory("--ready-latency", "fixed:0.1", "--load-slowdown", "0", "--latency-step", "2:4")
    started = time.monotonic()

    def ready_latency() -> float:
        token = mint(sim)
        sent = time.monotonic()
        peer = join(sim, token)
        arrived = peer.wait_for("ready")
        took = next(at for at, msg in peer.messages if msg is arrived) - sent
        peer.close()
        return took

    before = ready_latency()
    time.sleep(max(0.0, started + 2.2 - time.monotonic()))
    after = ready_latency()
    assert before < 0.3 and 0.35 < after < 1.0, (before, after)


class FakeTransport:
    """Records what a Connection writes; stands in for the asyncio transport."""

    def __init__(self):
        self.out = b""
        self.closed = self.aborted = self.paused = False

    def write(self, data):
        self.out += data

    def is_closing(self):
        return self.closed or self.aborted

    def get_write_buffer_size(self):
        return 0

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def pause_reading(self):
        self.paused = True


def client_frame(data, opcode, fin=1):
    return websocket.ABNF.create_frame(data, opcode, fin).format()  # websocket-client's framing, a random mask


def server_frames(data):
    return FrameReader().feed(data)  # the client's reader: what a client would make of the replies


def run_connection(script):
    async def main():
        transport = FakeTransport()
        conn = Connection(transport, Counters())
        await script(conn, transport)
        return conn, transport

    return asyncio.run(main())


def test_connection_reads_frames_in_any_chunks_and_answers_ping_and_close():
    async def script(conn, transport):
        join = client_frame('{"type":"join"}', websocket.ABNF.OPCODE_TEXT)
        early = client_frame(TONE_FRAMES[0], websocket.ABNF.OPCODE_BINARY)
        conn.feed_data(join + early[:5])
        conn.feed_data(early[5:])
        assert await conn.first_message(1.0) == (0x1, b'{"type":"join"}')
        assert conn._counters.frames_in == 1  # audio after the first message, before attach: counted, dropped

        audio, texts = [], []
        conn.attach(lambda pcm, now: audio.append(pcm), texts.append)
        stream = b"".join(
            [client_frame(f, websocket.ABNF.OPCODE_BINARY) for f in TONE_FRAMES[:3]]
            + [
                client_frame(b"hi", websocket.ABNF.OPCODE_PING),
                client_frame('{"type":', websocket.ABNF.OPCODE_TEXT, fin=0),
                client_frame(b"ping in between", websocket.ABNF.OPCODE_PING),
                client_frame('"hangup"}', websocket.ABNF.OPCODE_CONT),
                client_frame(b"\x01\x02\x03", websocket.ABNF.OPCODE_BINARY),  # not a multiple of 4 bytes
                client_frame(b"\x0f\xa0bye", websocket.ABNF.OPCODE_CLOSE),  # 4000, "bye"
            ]
        )
        for i in range(0, len(stream), 97):  # chunks that cut headers and payloads anywhere
            conn.feed_data(stream[i : i + 97])
        assert audio == [*TONE_FRAMES[:3], b"\x01\x02\x03"]
        assert texts == [b'{"type":"hangup"}']
        # pongs carry the pings' payloads; the Close is echoed with its code, then the socket closes
        replies = server_frames(transport.out)
        assert replies == [(0xA, b"hi"), (0xA, b"ping in between"), (0x8, b"\x0f\xa0")]
        assert transport.closed
        conn.feed_eof()
        assert await conn.closed == 4000

    run_connection(script)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(bytes(2_000_000), websocket.ABNF.OPCODE_BINARY), 1009),  # over the 1 MiB limit
        (bytes((0x82, 0xFF)) + (1 << 62).to_bytes(8, "big") + bytes(4), 1009),  # a claimed 2^62-byte frame
        (bytes((0x81, 0x02)) + b"hi", 1002),  # unmasked: a client must mask
        (client_frame(b"x" * 126, websocket.ABNF.OPCODE_PING), 1002),  # control frame over 125 bytes
    ],
)
def test_connection_closes_on_a_broken_frame_with_the_rfc_code(frame, code):
    async def script(conn, transport):
        conn.feed_data(frame[:20])
        conn.feed_data(frame[20:])

    conn, transport = run_connection(script)
    (opcode, payload), *_ = server_frames(transport.out)
    assert opcode == 0x8 and parse_close(payload) == code
    assert transport.paused and len(conn._reader._buffer) <= 20


# -- a whole call ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["tap", "aiohttp"])
def test_call_vad_persona_transcript_scoring(sim_factory, reader):
    sim = sim_factory("--ws-reader", reader)
    before = time.time()
    token = mint(sim, "cold-call-discovery")
    peer = join(sim, token, "cold-call-discovery")
    ready = peer.wait_for("ready")
    assert ready["persona"] == {"name": "Marcus Lee"}
    call_id = ready["callId"]
    assert call_id.startswith(CALL_ID_PREFIX) and ready["resumeToken"]
    r = requests.get(f"{sim.http_url}{PATH_CALLS}/{call_id}", headers=sim.headers, timeout=5)
    assert (r.status_code, rest_error(r)) == (404, "CALL_NOT_FOUND")  # only a scored call is readable

    # 1 s of loud tone then silence: the platform hears one utterance, the persona answers it
    peer.stream(TONE_FRAMES + [SILENCE] * 40)
    peer.wait_for("personaSpeaking", speaking=False, timeout=5)
    assert peer.types()[1:] == ["userSpeaking:True", "userSpeaking:False", "personaSpeaking:True",
                                "personaSpeaking:False"]  # fmt: skip
    assert 20 <= peer.audio_frames <= 30  # --persona-utterance fixed:0.5 at 20 ms a frame

    peer.send({"type": "hangup"})
    ended = peer.wait_for("ended")
    assert ended["callId"] == call_id and ended["reason"] == "hangup"
    assert 1.5 < ended["durationSec"] < 10
    assert peer.wait_closed() == 1000

    record = get_call(sim, call_id)
    assert record.status == "scored" and record.duration_sec == round(ended["durationSec"]) and 0 <= record.score <= 100
    assert record.ended_at >= before and record.scored_at >= record.ended_at
    rep = [s for s in record.transcript if s.speaker == "rep"]
    persona = [s for s in record.transcript if s.speaker == "persona"]
    assert len(rep) == 1 and rep[0].end - rep[0].start == pytest.approx(1.0, abs=0.15)
    assert len(persona) == 1 and persona[0].end - persona[0].start == pytest.approx(0.5, abs=0.05)
    assert rep[0].end < persona[0].start

    # the list: the call, once, as a slim row; a window that ends before it has none
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before - 1))
    query = {"source": "roleplay", "from": since}
    r = requests.get(sim.http_url + PATH_CALLS, params=query, headers=sim.headers, timeout=5)
    calls, cursor = parse_call_list(r.content)
    assert [c.id for c in calls] == [call_id] and calls[0].transcript == () and cursor is None
    r = requests.get(sim.http_url + PATH_CALLS, params={**query, "to": since}, headers=sim.headers, timeout=5)
    assert parse_call_list(r.content) == ([], None)
    health = requests.get(sim.http_url + "/healthz", timeout=5).json()
    assert health["totalCalls"] == 1 and health["activeCalls"] == 0 and health["framesIn"] == 90
    assert health["fastReaderConnections"] == (1 if reader == "tap" else 0)  # the fast path is the one in use

    truth_events(sim, "scored", callId=call_id)
    truth = {}
    for line in sim.truth():
        truth.setdefault(line["event"], line)
    assert {"minted", "redeemed", "join", "ready", "user_speaking", "persona_speaking", "ended", "scored"} <= set(truth)
    assert truth["ready"]["latency"] >= 0.05
    answer = truth_events(sim, "persona_speaking", callId=call_id, speaking=True)[0]
    assert answer["latency"] == pytest.approx(0.2, abs=0.1)  # --response-latency fixed:0.2
    assert truth["ended"]["durationSec"] == ended["durationSec"]


def test_greeting_barge_in_persona_turns_and_max_duration(sim_factory):
    sim = sim_factory("--greeting", "1", "--persona-turns", "1", "--max-call-seconds", "3")
    idle = join(sim, mint(sim))  # says nothing: the platform ends it after 3 s
    idle.wait_for("ready")
    peer = join(sim, mint(sim))
    peer.wait_for("ready")
    peer.wait_for("personaSpeaking", speaking=True, timeout=1)  # the greeting starts right away
    peer.pump(time.monotonic() + 0.2)
    peer.stream(TONE_FRAMES[:30] + [SILENCE] * 20)  # barge in on the greeting
    peer.wait_for("ended", timeout=5, reason="persona")  # one answer, then the persona hangs up
    assert peer.types()[1:] == ["personaSpeaking:True", "userSpeaking:True", "personaSpeaking:False",
                                "userSpeaking:False", "personaSpeaking:True", "personaSpeaking:False",
                                "ended"]  # fmt: skip
    assert peer.wait_closed() == 1000
    greeting = get_call(sim, peer.messages[0][1]["callId"]).transcript[0]
    assert greeting.speaker == "persona" and greeting.text.endswith("[interrupted]")
    assert greeting.end - greeting.start < 0.8

    ended = idle.wait_for("ended", timeout=5)
    assert ended["reason"] == "max_duration" and ended["durationSec"] == pytest.approx(3.0, abs=0.1)
    assert idle.wait_closed() == 1000


# -- refusals --------------------------------------------------------------------------------------


def test_join_refusals_and_rest_errors(sim):
    expect_refusal(join(sim, "tok_never_minted"), "token_invalid")
    token = mint(sim, "ma-full-sale")
    expect_refusal(join(sim, token, "renewal-upsell"), "unknown_drill")
    bad_audio = {"encoding": "pcm16le", "sampleRate": 44100, "channels": 1, "frameMs": 20}
    expect_refusal(join(sim, token, audio=bad_audio), "bad_audio_format")
    first = join(sim, token)  # refusals above did not use the token up
    ready = first.wait_for("ready")
    expect_refusal(join(sim, token), "token_redeemed")

    wrong = Peer(sim)
    wrong.send({"type": "resume", "resumeToken": "not-it", "callId": ready["callId"]})
    expect_refusal(wrong, "unknown_call")
    unknown = Peer(sim)
    unknown.send({"type": "resume", "resumeToken": ready["resumeToken"], "callId": "athos_call_nope"})
    expect_refusal(unknown, "unknown_call")
    garbage = Peer(sim)
    garbage.ws.send("hello")
    expect_refusal(garbage, "protocol_error")
    audio_first = Peer(sim)
    audio_first.ws.send_binary(SILENCE)
    expect_refusal(audio_first, "protocol_error")

    first.send({"type": "dance"})  # during a call a bad message is an error, and the call goes on
    assert first.wait_for("error")["code"] == "protocol_error"
    first.send({"type": "hangup"})
    assert first.wait_for("ended")["reason"] == "hangup"

    url = sim.http_url
    r = requests.post(url + PATH_SESSION, json={"platformAgentId": "nobody"}, headers=sim.headers, timeout=5)
    assert (r.status_code, rest_error(r)) == (404, "AGENT_NOT_FOUND")
    r = requests.post(url + PATH_SESSION, data=b"{not json", headers=sim.headers, timeout=5)
    assert (r.status_code, rest_error(r)) == (400, "INVALID_REQUEST")
    for method, path in (("post", PATH_SESSION), ("post", PATH_AGENTS), ("get", PATH_CALLS),
                         ("get", f"{PATH_CALLS}/{ready['callId']}")):  # fmt: skip
        r = requests.request(method, url + path, json={"platformAgentId": "x"}, timeout=5,
                             headers={"Authorization": "Bearer wrong"})  # fmt: skip
        assert (r.status_code, rest_error(r)) == (401, "INVALID_API_KEY")
        # every answer names its request, the error body and the header alike
        assert r.json()["error"]["requestId"] == r.headers[REQUEST_ID_HEADER] and r.headers[REQUEST_ID_HEADER]
    r = requests.get(url + PATH_CALLS + "/athos_call_nope", headers=sim.headers, timeout=5)
    assert (r.status_code, rest_error(r)) == (404, "CALL_NOT_FOUND")
    since = {"source": "roleplay", "from": "2026-01-01T00:00:00Z"}
    bad_queries = [
        {"source": "roleplay"}, {"from": since["from"]}, {**since, "limit": "101"}, {**since, "limit": "0"},
        {**since, "cursor": "not-a-cursor"}, {**since, "after": "now"}, {**since, "status": "scored"},
    ]  # fmt: skip
    for bad in bad_queries:
        r = requests.get(url + PATH_CALLS, params=bad, headers=sim.headers, timeout=5)
        assert (r.status_code, rest_error(r)) == (400, "INVALID_REQUEST"), bad
    # redeem: the session token's codes; a blank drill leaves the token unspent, an unknown one spends it
    assert rest_error(redeem(sim, "sess_never_minted")) == "INVALID_TOKEN"
    token = session_token(sim)
    assert (redeem(sim, token, " ").status_code, rest_error(redeem(sim, token, ""))) == (400, "INVALID_REQUEST")
    assert (redeem(sim, token, "no-such-drill").status_code, rest_error(redeem(sim, token))) == (
        400, "TOKEN_ALREADY_USED"
    )  # fmt: skip
    r = requests.post(url + PATH_AGENTS, data=RegisterAgentRequest("A", "B", "dup-rep").serialize(),
                      headers=sim.headers, timeout=5)  # fmt: skip
    agent = r.json()["agent"]
    r = requests.post(url + PATH_AGENTS, data=RegisterAgentRequest("A", "B", "dup-rep").serialize(),
                      headers=sim.headers, timeout=5)  # fmt: skip
    assert (r.status_code, rest_error(r)) == (409, "AGENT_ALREADY_EXISTS")
    assert r.json()["error"]["details"]["agentId"] == agent["id"]
    codes = {e["code"] for e in truth_events(sim, "error")}
    assert {"token_invalid", "unknown_drill", "bad_audio_format", "token_redeemed", "unknown_call"} <= codes


def test_token_expired_and_concurrency_limit(sim_factory):
    sim = sim_factory("--token-ttl", "1", "--max-calls", "1")
    first, second, third = mint(sim), mint(sim), mint(sim)
    peer = join(sim, first)
    peer.wait_for("ready")
    assert requests.get(sim.http_url + "/healthz", timeout=5).json()["activeCalls"] == 1
    expect_refusal(join(sim, second), "concurrency_limit")
    time.sleep(1.1)
    expect_refusal(join(sim, third), "token_expired")


def test_mint_rate_limit_and_injected_error(sim_factory):
    sim = sim_factory("--mint-rate", "1", "--error-rate", "1", "--error-code", "internal_error", "--quota-calls", "3")
    token = mint(sim)
    r = requests.post(sim.http_url + PATH_AGENTS, data=RegisterAgentRequest("A", "B", "r").serialize(),
                      headers=sim.headers, timeout=5)  # fmt: skip
    r = requests.post(sim.http_url + PATH_SESSION, json={"platformAgentId": "r"}, headers=sim.headers, timeout=5)
    assert (r.status_code, rest_error(r)) == (429, "rate_limited") and r.headers["Retry-After"] == "1"
    expect_refusal(join(sim, token), "internal_error")
    time.sleep(1.05)
    r = requests.post(sim.http_url + PATH_SESSION, json={"platformAgentId": "r"}, headers=sim.headers, timeout=5)
    assert r.status_code == 200
    time.sleep(1.05)
    r = requests.post(sim.http_url + PATH_SESSION, json={"platformAgentId": "r"}, headers=sim.headers, timeout=5)
    assert r.status_code == 200
    time.sleep(1.05)  # the tenant's quota of 3 is spent
    r = requests.post(sim.http_url + PATH_SESSION, json={"platformAgentId": "r"}, headers=sim.headers, timeout=5)
    assert (r.status_code, rest_error(r)) == (403, "TENANT_QUOTA_EXCEEDED")


# -- drops and resume ------------------------------------------------------------------------------


def test_drop_resume_and_resume_window(sim_factory):
    sim = sim_factory("--drop-after", "0.5", "--resume-window", "2")
    abandoned = join(sim, mint(sim))
    abandoned_id = abandoned.wait_for("ready")["callId"]
    peer = join(sim, mint(sim))
    ready = peer.wait_for("ready")
    assert peer.wait_closed(timeout=3) == "lost"  # aborted: no close frame, the client sees 1006
    assert abandoned.wait_closed(timeout=3) == "lost"

    again = Peer(sim)
    again.send({"type": "resume", "resumeToken": ready["resumeToken"], "callId": ready["callId"]})
    assert again.wait_for("reconnected")["callId"] == ready["callId"]
    again.stream(TONE_FRAMES[:10])  # the call goes on, on the new socket
    again.wait_for("userSpeaking", speaking=False)  # the audio simply stopped: the utterance ends anyway
    again.send({"type": "hangup"})
    assert again.wait_for("ended")["reason"] == "hangup"
    assert again.wait_closed() == 1000

    late = Peer(sim)  # a call that is over cannot be resumed
    late.send({"type": "resume", "resumeToken": ready["resumeToken"], "callId": ready["callId"]})
    expect_refusal(late, "unknown_call")

    ended = truth_events(sim, "ended", callId=abandoned_id, timeout=5)  # window of 2 s after the drop
    assert ended[0]["reason"] == "dropped"
    assert truth_events(sim, "drop", callId=ready["callId"])[0]["cause"] == "drop_after"
    assert truth_events(sim, "resume", callId=ready["callId"])[0]["gap"] > 0


def test_a_turn_the_platform_was_answering_when_the_connection_dropped_is_answered_after_the_resume(sim_factory):
    """A transient drop does not make the persona forget the rep: the rep's turn has ended (the
    persona thinks for 2 s) when the connection drops; once resumed, the reply comes."""
    sim = sim_factory("--response-latency", "fixed:2.0", "--load-slowdown", "0", "--drop-after", "1.5")
    peer = join(sim, mint(sim))
    ready = peer.wait_for("ready")
    peer.stream(TONE_FRAMES[:25] + [SILENCE] * 20)  # 0.5 s of speech: heard over 0.3 s later
    peer.wait_for("userSpeaking", speaking=False)
    assert peer.wait_closed(timeout=3) == "lost"  # dropped while the persona thinks
    again = Peer(sim)
    again.send({"type": "resume", "resumeToken": ready["resumeToken"], "callId": ready["callId"]})
    again.wait_for("reconnected")
    again.wait_for("personaSpeaking", speaking=True, timeout=4)
    again.send({"type": "hangup"})
    again.wait_for("ended")
    reply = [e for e in truth_events(sim, "persona_speaking", callId=ready["callId"]) if e["speaking"]]
    assert len(reply) == 1 and reply[0]["latency"] == pytest.approx(2.0, abs=0.05)  # from the rep's return


def test_resume_failure_loses_the_call(sim_factory):
    sim = sim_factory("--drop-after", "0.3", "--resume-fail-rate", "1")
    peer = join(sim, mint(sim))
    ready = peer.wait_for("ready")
    assert peer.wait_closed(timeout=3) == "lost"
    again = Peer(sim)
    again.send({"type": "resume", "resumeToken": ready["resumeToken"], "callId": ready["callId"]})
    expect_refusal(again, "unknown_call")
    assert get_call(sim, ready["callId"]).status in ("scoring", "scored")
    assert truth_events(sim, "resume_failed", callId=ready["callId"])
    assert truth_events(sim, "ended", callId=ready["callId"])[0]["reason"] == "dropped"


# -- webhooks --------------------------------------------------------------------------------------


def test_webhook_signed_retried_and_duplicated(sim_factory):
    receiver = WebhookReceiver(fail_first=1)
    try:
        sim = sim_factory(
            "--webhook-duplicate-rate", "1", "--webhook-url", receiver.url, "--webhook-retry-delay", "0.3"
        )
        peer = join(sim, mint(sim))
        call_id = peer.wait_for("ready")["callId"]
        peer.send({"type": "hangup"})
        peer.wait_for("ended")
        poll(lambda: len(receiver.received) >= 3, timeout=10)  # 500, retry 200, duplicate 200
        time.sleep(0.3)
        assert [status for status, _, _ in receiver.received] == [500, 200, 200]
        ids, bodies = set(), set()
        for _, headers, body in receiver.received:
            verify_webhook(sim.webhook_secret, headers[SIGNATURE_HEADER], body, time.time())
            event = ScoredEvent.parse(body)
            assert event.call_id == call_id and event.success and event.agent_id.startswith("athos_agent_")
            assert b"score" not in body.replace(b"call.scored", b"")  # thin: never the score
            assert headers[WEBHOOK_ID_HEADER].startswith("wh_") and headers["Content-Type"] == "application/json"
            ids.add(headers[WEBHOOK_ID_HEADER])
            bodies.add(body)
        assert len(ids) == 1 and len(bodies) == 1  # the retry: the same id and the same body
        poll(lambda: len(truth_events(sim, "webhook_attempt", callId=call_id)) == 3)
        attempts = truth_events(sim, "webhook_attempt", callId=call_id)
        assert [(a["attempt"], a["ok"], a["status"], a["duplicate"]) for a in attempts] == [
            (1, False, 500, False),
            (2, True, 200, False),
            (1, True, 200, True),
        ]
    finally:
        receiver.close()


# -- stopping --------------------------------------------------------------------------------------


def test_sigterm_stops_gracefully(sim_factory):
    sim = sim_factory()
    peer = join(sim, mint(sim))
    call_id = peer.wait_for("ready")["callId"]
    assert sim.stop() == 0
    assert peer.wait_closed() in (1001, "lost")  # going away: a client would try to resume
    events = [e["event"] for e in sim.truth() if e["callId"] == call_id]
    assert events[-1] == "drop"  # flushed at exit
