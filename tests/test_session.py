"""The session client against the real simulator on loopback: events, drops, errors, scores."""

import ssl
import time

import numpy as np
import pytest

from athos_load.api import ApiError, AthosApi, ScoreBoard, WebhookReceiver
from athos_load.session import ReconnectPolicy, RoleplaySession, SessionError, shared_ssl_context
from athos_load.sim.config import SIM_WEBHOOK_SECRET
from athos_load.wire import CALL_ID_PREFIX, SDK_EVENTS, AudioFormat, CallStatus, ErrorCode

FMT = AudioFormat()
FAST = ["--ready-latency", "fixed:0.05", "--response-latency", "fixed:0.2", "--persona-utterance", "fixed:0.6"]


def clip(*parts: tuple[str, float]) -> list[bytes]:
    """Frames for a script like ("speech", 1.0), ("silence", 0.5): a voiced tone stands in for speech."""
    chunks = []
    for kind, seconds in parts:
        n = int(round(seconds * FMT.sample_rate))
        if kind == "speech":
            t = np.arange(n) / FMT.sample_rate
            wave = 0.25 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 540 * t)
            chunks.append((wave * 32767).astype("<i2"))
        else:
            chunks.append(np.zeros(n, "<i2"))
    pcm = np.concatenate(chunks).tobytes()
    step = FMT.frame_bytes
    return [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]


class Recorder:
    """Subscribes to every SDK event of a session and keeps them in order."""

    def __init__(self, session):
        self.events = []
        for name in SDK_EVENTS:
            session.on(name, self.events.append)

    @property
    def names(self):
        return [e.name for e in self.events]

    def first(self, name):
        return next(e for e in self.events if e.name == name)

    def wait_for(self, name, timeout=10.0, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.names.count(name) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} (x{count}) within {timeout}s; saw {self.names}")


def assert_valid_order(events):
    """The SDK's ordering rules, checked over a whole call."""
    names = [e.name for e in events]
    assert names[0] == "connecting" and names[1] == "ready"
    assert names.count("ended") == 1 and names[-1] == "ended"
    for kind in ("userSpeaking", "personaSpeaking"):
        flags = [e.payload["speaking"] for e in events if e.name == kind]
        assert flags == [i % 2 == 0 for i in range(len(flags))], f"{kind} does not alternate: {flags}"
    pending = 0
    for name in names:
        if name == "reconnecting":
            assert pending == 0
            pending = 1
        elif name == "reconnected":
            assert pending == 1
            pending = 0
    times = [e.at for e in events]
    assert times == sorted(times)


def assert_seed_payload(event):
    payload = event.payload
    if event.name in ("connecting", "reconnecting", "reconnected"):
        assert payload is None
    elif event.name == "ready":
        assert set(payload) == {"persona"} and set(payload["persona"]) == {"name"}
        assert isinstance(payload["persona"]["name"], str) and payload["persona"]["name"]
    elif event.name in ("personaSpeaking", "userSpeaking"):
        assert set(payload) == {"speaking"} and isinstance(payload["speaking"], bool)
    elif event.name == "ended":
        assert set(payload) == {"callId", "durationSec"}
        assert payload["callId"].startswith(CALL_ID_PREFIX) and isinstance(payload["durationSec"], float)
    elif event.name == "error":
        assert set(payload) == {"code", "message"} and all(isinstance(v, str) for v in payload.values())


def redeemer(api, token, drill):
    """The redeem step of connect(), as the tool's call wires it: REST failures become the session's."""

    def redeem():
        try:
            return api.redeem(token, drill)
        except ApiError as exc:
            raise SessionError(exc.code, str(exc)) from None

    return redeem


def new_session(sim, api=None, drill="ma-full-sale", **options):
    """A session whose connect() redeems a fresh session token (the SDK's way)."""
    api = api or AthosApi(sim.http_url, sim.api_key)
    token = api.mint_token().token
    return RoleplaySession.create(token=token, drill_key=drill, url="", redeem=redeemer(api, token, drill), **options)


def ticket(api, drill="ma-full-sale"):
    """A connection ticket and the URL to join with it: a session token minted and redeemed."""
    redemption = api.redeem(api.mint_token().token, drill)
    return redemption.connection_ticket, redemption.connection_url


@pytest.fixture(scope="module")
def fast_sim(sim_factory):
    return sim_factory(*FAST, "--score-delay", "fixed:0.3")


def test_full_call_events_transcript_and_webhook(sim_factory):
    board = ScoreBoard()
    receiver = WebhookReceiver(board, SIM_WEBHOOK_SECRET).start()
    try:
        sim = sim_factory(*FAST, "--score-delay", "fixed:0.3", "--drop-after", "1.5", "--webhook-url", receiver.url)
        api = AthosApi(sim.http_url, sim.api_key)
        session = new_session(sim, api)
        rec = Recorder(session)
        session.connect()
        script = (("silence", 0.3), ("speech", 1.0), ("silence", 1.4), ("speech", 0.7), ("silence", 1.2))
        frames = clip(*script)
        stream = session.play(frames)
        assert stream.wait(timeout=30)
        session.hangup()
        assert_valid_order(rec.events)
        for event in rec.events:
            assert_seed_payload(event)
        assert {"reconnecting", "reconnected", "userSpeaking", "personaSpeaking"} <= set(rec.names)
        ended = rec.first("ended").payload
        audio_seconds = len(frames) * FMT.frame_seconds
        # the call lasted as long as the audio we streamed (plus connect/hang-up round trips)
        assert audio_seconds - 0.1 <= ended["durationSec"] <= audio_seconds + 0.5
        assert session.end_reason == "hangup"

        score = board.wait(ended["callId"], timeout=20)
        assert score is not None and score.via == "webhook"
        assert receiver.counts["accepted"] == 1

        record = api.get_call(ended["callId"])
        assert record.status is CallStatus.SCORED and 0 <= record.score <= 100 and score.score is None
        rep = [s for s in record.transcript if s.speaker == "rep"]
        # the utterances we sent, relative to the stream's start; the drop at 1.5 s lost some frames
        # of the first silence, never of speech, so both utterances are heard whole
        offset = stream.start - rec.first("ready").at
        assert len(rep) == 2
        for segment, (start, length) in zip(rep, [(0.3, 1.0), (2.7, 0.7)], strict=True):
            assert segment.start == pytest.approx(offset + start, abs=0.15)
            assert segment.end - segment.start == pytest.approx(length, abs=0.15)
        assert any(s.speaker == "persona" for s in record.transcript)
    finally:
        receiver.stop()


def test_unsubscribe_off_and_raising_listener(fast_sim):
    session = new_session(fast_sim)
    calls = {"a": 0, "b": 0, "boom": 0}

    def a(event):
        calls["a"] += 1

    def b(event):
        calls["b"] += 1

    def boom(event):
        calls["boom"] += 1
        raise RuntimeError("listener bug")

    unsubscribe = session.on("userSpeaking", a)
    session.on("userSpeaking", b)
    session.on("userSpeaking", boom)
    rec = Recorder(session)
    with pytest.raises(ValueError, match="unknown event"):
        session.on("transcript", a)
    session.connect()
    session.play(clip(("speech", 0.5), ("silence", 0.6))).wait(timeout=10)
    rec.wait_for("userSpeaking", count=2)
    assert calls == {"a": 2, "b": 2, "boom": 2}
    unsubscribe()
    session.off("userSpeaking", b)
    session.off("userSpeaking", b)  # twice is harmless
    session.play(clip(("speech", 0.5), ("silence", 0.6))).wait(timeout=10)
    rec.wait_for("userSpeaking", count=4)
    assert calls == {"a": 2, "b": 2, "boom": 4}  # the raising listener did not kill the session
    session.hangup()
    assert rec.names[-1] == "ended"


def test_failed_resume_is_error_then_ended(sim_factory):
    sim = sim_factory(*FAST, "--drop-after", "0.5", "--resume-fail-rate", "1")
    session = new_session(sim)
    rec = Recorder(session)
    session.connect()
    assert session.wait_ended(timeout=15)
    assert rec.names[:3] == ["connecting", "ready", "reconnecting"]
    assert rec.names[-2:] == ["error", "ended"]
    assert rec.first("error").payload["code"] == ErrorCode.UNKNOWN_CALL
    assert rec.first("ended").payload["callId"] == session.call_id
    session.close()


def test_platform_gone_is_reconnect_failed(sim_factory):
    sim = sim_factory(*FAST)
    session = new_session(sim, reconnect=ReconnectPolicy(max_attempts=3, initial_delay=0.05))
    rec = Recorder(session)
    session.connect()
    sim.kill()
    assert session.wait_ended(timeout=15)
    assert rec.names[2:] == ["reconnecting", "error", "ended"]
    assert rec.first("error").payload["code"] == ErrorCode.RECONNECT_FAILED


def expect_join_error(session, code):
    rec = Recorder(session)
    with pytest.raises(SessionError) as info:
        session.connect(timeout=10)
    assert info.value.code == code
    assert rec.names == ["connecting", "error"]
    assert rec.first("error").payload["code"] == code


def test_join_error_codes(sim_factory):
    sim = sim_factory(*FAST, "--token-ttl", "0.5", "--max-calls", "1")
    api = AthosApi(sim.http_url, sim.api_key)
    url = sim.ws_url
    # the realtime leg's refusals of a connection ticket (the simulator's own protocol)
    expect_join_error(RoleplaySession.create(token="forged", drill_key="ma-full-sale", url=url), "token_invalid")

    token, url = ticket(api)
    expect_join_error(RoleplaySession.create(token=token, drill_key="cold-call-discovery", url=url), "unknown_drill")

    token, url = ticket(api)
    odd = AudioFormat(sample_rate=11025)
    session = RoleplaySession.create(token=token, drill_key="ma-full-sale", url=url, audio=odd)
    expect_join_error(session, "bad_audio_format")

    token, url = ticket(api)
    first = RoleplaySession.create(token=token, drill_key="ma-full-sale", url=url)
    first.connect()
    expect_join_error(RoleplaySession.create(token=token, drill_key="ma-full-sale", url=url), "token_redeemed")
    second = new_session(sim, api)
    expect_join_error(second, "concurrency_limit")
    first.hangup()

    token, url = ticket(api)
    time.sleep(0.8)
    expect_join_error(RoleplaySession.create(token=token, drill_key="ma-full-sale", url=url), "token_expired")

    # the redeem's refusals of a session token, inside connect() (after connecting, as in the SDK)
    token = api.mint_token().token
    time.sleep(0.8)
    expired = RoleplaySession.create(token=token, drill_key="ma-full-sale", url="", redeem=redeemer(api, token, "x"))
    expect_join_error(expired, "TOKEN_EXPIRED")
    token = api.mint_token().token
    api.redeem(token, "ma-full-sale")
    used = RoleplaySession.create(token=token, drill_key="ma-full-sale", url="", redeem=redeemer(api, token, "x"))
    expect_join_error(used, "TOKEN_ALREADY_USED")
    token = api.mint_token().token
    unknown = RoleplaySession.create(token=token, drill_key="nope", url="", redeem=redeemer(api, token, "nope"))
    expect_join_error(unknown, "DRILL_NOT_FOUND")


def test_no_persona_available_is_service_unavailable_with_the_request_id(sim_factory):
    sim = sim_factory(*FAST, "--unavailable-rate", "1")
    api = AthosApi(sim.http_url, sim.api_key)
    token = api.mint_token().token
    with pytest.raises(ApiError) as info:
        api.redeem(token, "ma-full-sale")
    assert (info.value.code, info.value.status) == ("SERVICE_UNAVAILABLE", 503) and info.value.request_id
    with pytest.raises(ApiError) as info:
        api.redeem(token, "ma-full-sale")
    assert info.value.code == "TOKEN_ALREADY_USED"  # the attempt spent the token: mint a new one
    token = api.mint_token().token
    session = RoleplaySession.create(
        token=token, drill_key="ma-full-sale", url="", redeem=redeemer(api, token, "ma-full-sale")
    )
    expect_join_error(session, "SERVICE_UNAVAILABLE")
    assert "(request req_" in session.last_error.message


def test_injected_error_code(sim_factory):
    sim = sim_factory(*FAST, "--error-rate", "1", "--error-code", "internal_error")
    expect_join_error(new_session(sim), "internal_error")


def test_rest_error_codes_carry_the_request_id(sim_factory):
    sim = sim_factory(*FAST)
    with pytest.raises(ApiError) as info:
        AthosApi(sim.http_url, "wrong-key").mint_token()
    assert (info.value.code, info.value.status) == ("INVALID_API_KEY", 401)
    api = AthosApi(sim.http_url, sim.api_key)
    with pytest.raises(ApiError) as info:
        api.mint_token("never-registered")
    assert (info.value.code, info.value.status) == ("AGENT_NOT_FOUND", 404)
    with pytest.raises(ApiError) as info:
        api.get_call("athos_call_nope")
    error = info.value
    assert error.code == "CALL_NOT_FOUND" and error.request_id.startswith("req_")
    assert f"(request {error.request_id})" in str(error)  # what the tool logs and reports names it


def test_429_retry_after_is_honoured_and_bounded(sim_factory):
    sim = sim_factory(*FAST, "--mint-rate", "1")  # one token a second: Retry-After 1
    api = AthosApi(sim.http_url, sim.api_key)
    started = time.monotonic()
    for _ in range(3):
        api.mint_token()
    assert api.rate_limited >= 1 and 1.0 <= time.monotonic() - started < 8  # it waited instead of failing
    slow = sim_factory(*FAST, "--mint-rate", "0.02")  # Retry-After 50 s: past what a request may wait
    api = AthosApi(slow.http_url, slow.api_key)
    api.mint_token()
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        api.mint_token()
    assert (info.value.code, info.value.status) == ("rate_limited", 429) and info.value.request_id
    assert time.monotonic() - started < 2


def test_connect_to_nothing_is_connect_failed():
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = RoleplaySession.create(token="t", drill_key="d", url=f"ws://127.0.0.1:{port}/v1/realtime")
    expect_join_error(session, "connect_failed")


def test_wss_with_one_shared_tls_context(sim_factory, tmp_path):
    import trustme

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    sim = sim_factory(*FAST, "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.pem"))
    assert sim.url.startswith("https://") and sim.ws_url.startswith("wss://")
    api = AthosApi(sim.http_url, sim.api_key, verify=str(tmp_path / "ca.pem"))
    # Trust the test CA in the process's one shared context: sessions given no context of their own
    # connect only if they use it (and nothing builds a fresh context per connect).
    ca.configure_trust(shared_ssl_context())
    for _ in range(2):
        session = new_session(sim, api)
        rec = Recorder(session)
        session.connect()
        session.say(clip(("speech", 0.5), ("silence", 0.6))).wait(timeout=10)
        rec.wait_for("userSpeaking", count=2)
        session.hangup()
        assert rec.names[-1] == "ended"
    # certificates are verified: a context that does not trust the test CA fails to connect
    stranger = new_session(sim, api, ssl_context=ssl.create_default_context())
    expect_join_error(stranger, "connect_failed")


def test_scores_by_polling_when_no_webhook_reaches_the_tool(fast_sim):
    from athos_load.api import ScorePoller

    api = AthosApi(fast_sim.http_url, fast_sim.api_key)
    board = ScoreBoard()
    poller = ScorePoller(api, board, interval=0.2).start()
    try:
        ended = []
        for _ in range(2):
            session = new_session(fast_sim, api)
            session.on("ended", ended.append)
            session.connect()
            session.say(clip(("speech", 0.4), ("silence", 0.4))).wait(timeout=10)
            session.hangup()
        for event in ended:
            score = board.wait(event.payload["callId"], timeout=15)
            assert score is not None and score.via == "poll"
            assert 0 <= api.get_call(event.payload["callId"]).score <= 100
        assert poller.counts["errors"] == 0 and poller.counts["pages"] >= poller.counts["polls"] > 0
    finally:
        poller.stop()


def test_hanging_up_during_a_drop_resumes_to_tell_the_platform(sim_factory):
    """A call hung up while it reconnects (the run stopping under it) must reach the platform, or the
    platform keeps it until its resume window ends (reason `dropped`)."""
    sim = sim_factory(*FAST, "--drop-after", "0.5", "--resume-window", "30")
    session = new_session(sim, reconnect=ReconnectPolicy(initial_delay=0.6, max_delay=0.6))
    rec = Recorder(session)
    session.connect()
    rec.wait_for("reconnecting", timeout=5)
    started = time.monotonic()
    session.hangup(timeout=5)  # from inside the reconnect back-off (0.3–0.6 s)
    assert time.monotonic() - started < 3
    assert "error" not in rec.names and rec.names[-1] == "ended"
    call_id = session.call_id
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ended = [t for t in sim.truth() if t["event"] == "ended" and t["callId"] == call_id]
        if ended:
            break
        time.sleep(0.2)
    assert ended and ended[0]["reason"] == "hangup"  # told, not left to the 30 s resume window


def test_reps_are_registered_once_and_reused_by_another_process(sim_factory):
    """Each process registers the pool's reps at first use; a second process (a worker, the next
    run) meets 409 AGENT_ALREADY_EXISTS and reuses the rep it names."""
    sim = sim_factory(*FAST)
    first, second = AthosApi(sim.http_url, sim.api_key), AthosApi(sim.http_url, sim.api_key)
    for _ in range(3):
        first.mint_token()
    assert sorted(a.platform_agent_id for a in first.reps.registered.values()) == [
        "athos-load-rep-1", "athos-load-rep-2", "athos-load-rep-3"
    ]  # fmt: skip
    second.mint_token()
    assert second.reps.registered[0].id == first.reps.registered[0].id  # the same agent, not a new one
    deadline = time.monotonic() + 5  # the truth log is flushed every 0.5 s
    while time.monotonic() < deadline and len([t for t in sim.truth() if t["event"] == "agent"]) < 3:
        time.sleep(0.1)
    time.sleep(0.6)  # and nothing more after it
    assert [t["platformAgentId"] for t in sim.truth() if t["event"] == "agent"] == [
        "athos-load-rep-1", "athos-load-rep-2", "athos-load-rep-3"
    ]  # fmt: skip
