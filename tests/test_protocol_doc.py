"""docs/protocol.md must not drift from the code: codes, events, numbers and the signature example.

A peer is built from the document alone, so every value it states that the code also defines is
checked here against the code. Pure text checks plus imports: no sockets, no simulator.
"""

import inspect
import json
import re
from pathlib import Path

import pytest

from athos_load import api, audio, session, wire
from athos_load.api import RepPool, WebhookReceiver
from athos_load.sim import platform, scoring, server, vad
from athos_load.sim.config import SimConfig
from athos_load.wire import (
    API_ERROR_CODES,
    RESUMABLE_CLOSE_CODES,
    SDK_ERROR_CODES,
    SDK_EVENTS,
    SERVER_ERROR_CODES,
    AudioFormat,
    CallRecord,
    CallStatus,
    ErrorCode,
    ScoredEvent,
    SignatureError,
    sign_webhook,
    verify_webhook,
)

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
TEXT = DOC.replace("\u2212", "-")  # the doc writes minus signs as U+2212
FLAT = " ".join(TEXT.split())  # for phrases that a line break may cut
SIM = SimConfig()


def section(number: int) -> str:
    """The text of ``## <number>.`` up to the next top-level section."""
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", TEXT, re.M | re.S)
    assert match, f"no section {number} in {DOC_PATH.name}"
    return match.group(0)


def paragraph(needle: str) -> str:
    """The first paragraph (or table row, or list item) that mentions ``needle``, whitespace collapsed."""
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n|\n(?=\||\* |- \[)", TEXT)]
    found = [b for b in blocks if needle in b]
    assert found, f"{needle!r} is not in {DOC_PATH.name}"
    return found[0]


def table_codes(text: str) -> list[str]:
    return re.findall(r"^\| `([A-Za-z_]+)` \|", text, re.M)


def num(value: float) -> str:
    return f"{value:g}"


# -- names -----------------------------------------------------------------------------------------


def test_error_code_tables_match_the_enum():
    errors = section(6)
    parts = re.split(
        r"^(?=The SDK's own|Sent by the simulator's realtime leg|Raised by the client itself)", errors, flags=re.M
    )
    assert len(parts) == 4, "section 6 needs the API, SDK, realtime and client tables, in that order"
    api, sdk, realtime, client = (table_codes(part) for part in parts)
    for codes in (api, sdk, realtime, client):
        assert len(codes) == len(set(codes))
    assert set(api) == {str(c) for c in API_ERROR_CODES}
    assert set(sdk) == {str(c) for c in SDK_ERROR_CODES}
    assert set(realtime) == {str(c) for c in SERVER_ERROR_CODES}
    others = API_ERROR_CODES | SDK_ERROR_CODES | SERVER_ERROR_CODES
    assert set(client) == {str(c) for c in ErrorCode} - {str(c) for c in others}


def test_rest_error_statuses_match():
    rows = {code: row for row in section(6).splitlines() for code in table_codes(row)}
    for code, status in wire.HTTP_STATUS.items():
        assert f"| {status} |" in rows[str(code)], (code, status)


def test_sdk_events_states_statuses_and_reasons_are_named():
    for name in SDK_EVENTS:
        assert f"`{name}`" in TEXT, name
    assert f"`{CallStatus.SCORED.value}`" in section(3)  # the only status a reader sees
    reasons = paragraph("`reason` is one of")
    for reason in ("hangup", "persona", "max_duration", "dropped", "error"):
        assert f"`{reason}`" in reasons, reason
    detail = CallRecord("athos_call_x", CallStatus.SCORED, "drill").to_wire()
    slim = CallRecord("athos_call_x", CallStatus.SCORED, "drill").to_wire(detail=False)
    for key in detail:
        assert f"`{key}`" in section(3), key
    row = paragraph("A slim row has")
    for key in slim:
        assert f"`{key}`" in row, key
    for key in ("role", "content", "startTime", "endTime", "overallScore", "summary", "feedback"):
        assert f'"{key}"' in section(3), key


def test_client_state_table_is_the_transition_table():
    """Section 2.6 lists, per state, ``what, what → `next`; …``: exactly the TRANSITIONS table."""
    table = re.search(r"^\| state \| what happens.*?(?=\n\n)", TEXT, re.M | re.S)
    assert table, "no client state table in section 2"
    rows = re.findall(r"^\| `([a-z_]+)` \| (.*) \|$", table.group(0), re.M)
    documented = set()
    for state, cell in rows:
        for item in cell.split("; "):
            what, arrow, target = item.rpartition(" → ")
            assert arrow, item
            for name in re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", what)):
                documented.add((state, name, target.strip("`")))
    names = {wire.Speaking: ("userSpeaking", "personaSpeaking"), wire.ConnectionLost: ("lost",)}
    table_rows = {
        (state.value, name, target.value)
        for (state, happening), target in wire.TRANSITIONS.items()
        for name in names.get(happening) or (getattr(happening, "type", None) or happening.name,)
    }
    assert documented == table_rows
    final = paragraph("are final.")
    for state in wire.TERMINAL_STATES:
        assert f"`{state.value}`" in final, state


def test_no_files_a_peer_does_not_have():
    assert not re.search(r"\w\.py\b", DOC), "a .py file name"
    for path in ("athos_load", "shared/", "seed/", "tests/", "docs/", "sim/"):
        assert path not in DOC, path
    assert not re.search(r"\b[\w.-]+/[\w./-]*\.(txt|ya?ml|toml|cfg|json|md)\b", DOC), "a repository path"


# -- numbers ---------------------------------------------------------------------------------------


def test_webhook_receiver_path_and_tolerance():
    params = inspect.signature(WebhookReceiver.__init__).parameters
    assert f"`POST {params['path'].default}`" in FLAT
    assert f"{params['host'].default} on a free port" in FLAT and params["port"].default == 0
    tolerance = inspect.signature(verify_webhook).parameters["tolerance"].default
    assert tolerance == params["tolerance"].default
    assert f"> {num(tolerance)}` seconds" in FLAT


def test_call_list_limits():
    row = paragraph("| `limit` |")
    assert f"default {server.DEFAULT_LIST_LIMIT}" in row
    assert f"at most {server.MAX_LIST_LIMIT}" in row
    query = paragraph("Query: `source=roleplay`")
    for name in server.LIST_PARAMS:
        assert f"`{name}" in query, name
    assert "`after=now`" in paragraph("It sends only the parameters above")  # refused: not the contract's


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("`--resume-window`", f"{num(SIM.resume_window)} s"),
        ("`--token-ttl`", f"{num(SIM.token_ttl)} s"),
        ("`--join-timeout`", f"{num(SIM.join_timeout)} s"),
        ("`--max-call-seconds`", f"{num(SIM.max_call_seconds)} s"),
        ("`--greeting SECONDS`", f"default {num(SIM.greeting)}"),
        ("`--persona-turns N`", f"default {SIM.persona_turns}"),
        ("`--vad-threshold-db`", f"{num(SIM.vad_threshold_db)} dBFS"),
        ("`--vad-hangover-ms`", f"{num(SIM.vad_hangover_ms)} ms"),
        ("`--call-retention`", f"{num(SIM.call_retention)} s"),
        ("`--max-retained-calls`", f"{SIM.max_retained_calls}"),
        ("`--webhook-retries`", f"default {SIM.webhook_retries}"),
        ("`--webhook-retry-delay`", f"{num(SIM.webhook_retry_delay)} s later"),
        ("`--webhook-retries`", f"{num(scoring.DELIVERY_TIMEOUT)} s per attempt"),
        ("`--mint-rate`", "`Retry-After`"),
        ("`--quota-calls N`", "`TENANT_QUOTA_EXCEEDED`"),
        ("`--score-fail-rate`", "(default 0)"),
    ],
)
def test_simulator_defaults(flag, expected):
    assert expected in paragraph(flag), (flag, expected)


def test_simulator_vad_and_response_details():
    assert SIM.response_latency.kind == "lognormal"
    answers = paragraph("`--response-latency`")
    assert f"median {num(SIM.response_latency.a)} s" in answers
    assert f"p95 {num(SIM.response_latency.b)} s" in answers
    assert f"1 + {num(SIM.load_slowdown)} × active calls / 100" in answers
    assert f"{vad.START_FRAMES} consecutive speech frames start an utterance" in FLAT
    assert f"it ends {num(platform.STALL_GRACE)} s after the hangover" in FLAT


def test_end_of_speech_convention():
    rule = paragraph("a frame is voiced when")
    assert f"at least {num(audio.SPEECH_FLOOR_DB)} dBFS" in rule
    assert f"within {num(audio.SPEECH_RANGE_DB)} dB of the clip's loudest frame" in rule
    assert f"shorter than {num(1000 * audio.MIN_GAP_SECONDS)} ms are bridged" in rule
    assert f"shorter than {num(1000 * audio.MIN_SPEECH_SECONDS)} ms ignored" in rule
    assert "the end of the last voiced frame" in FLAT


def test_audio_formats():
    accepted = paragraph("Accepted: sample rates")
    rates = ", ".join(str(r) for r in sorted(AudioFormat.SAMPLE_RATES))
    frames = ", ".join(str(f) for f in sorted(AudioFormat.FRAME_MS))
    assert rates in accepted
    assert frames.rpartition(", ")[0] + " or " + frames.rpartition(", ")[2] in accepted
    assert f"{AudioFormat().frame_bytes} for the default" in accepted
    join = re.search(r'```json\n(\{"type": "join".*?)```', DOC, re.S)
    assert join, "no join example"
    assert json.loads(join.group(1))["audio"] == AudioFormat().to_wire()  # "absent means exactly the object above"


def test_close_codes_and_client_backoff(monkeypatch):
    transient = paragraph("What the client treats as transient")
    for code in RESUMABLE_CLOSE_CODES:
        assert str(code) in transient, code
    policy = session.ReconnectPolicy()
    backoff = paragraph("**Client backoff**")
    assert f"up to {policy.max_attempts} attempts" in backoff
    assert f"k = 0…{policy.max_attempts - 1}" in backoff
    assert f"min({policy.max_delay:.1f} s, {num(policy.initial_delay)} s × 2^k)" in backoff
    bounds: list[tuple[float, float]] = []
    monkeypatch.setattr(session.random, "uniform", lambda a, b: bounds.append((a, b)) or b)
    delays = [policy.delay(k) for k in range(policy.max_attempts)]
    lo, hi = bounds[0]
    assert f"factor in [{lo:.1f}, {hi:.1f}]" in backoff
    assert f"at most {', '.join(num(d) for d in delays)} s, {num(round(sum(delays), 6))} s in all" in backoff


# -- the worked signature example ------------------------------------------------------------------


def worked_example() -> dict[str, str]:
    block = re.search(r"Worked example.*?```\n(.*?)```", DOC, re.S)
    assert block, "no worked signature example"
    fields = dict(re.findall(r"^(\w+): +(.*)$", block.group(1), re.M))
    assert set(fields) == {"secret", "t", "body", "signed", "header"}, fields
    return fields


def test_worked_signature_example_verifies():
    ex = worked_example()
    t, body = int(ex["t"]), ex["body"].encode("utf-8")
    name, _, header = ex["header"].partition(": ")
    assert name == wire.SIGNATURE_HEADER
    assert ex["signed"] == f"{t}.{ex['body']}"
    assert header == sign_webhook(ex["secret"], t, body)
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify_webhook(ex["secret"], header, body, now=t) == t
    assert verify_webhook(ex["secret"], header, body, now=t + 300) == t
    with pytest.raises(SignatureError):
        verify_webhook(ex["secret"], header, body + b" ", now=t)
    with pytest.raises(SignatureError):
        verify_webhook(ex["secret"], header, body, now=t + 301)
    event = ScoredEvent.parse(body)
    assert event.serialize() == ex["body"]  # the body is exactly what a sender serializes


def test_the_rest_paths_and_headers_are_the_codes():
    assert f"`{wire.API_BASE}`" in section(1)
    for method, path in (("POST", wire.PATH_AGENTS), ("POST", wire.PATH_SESSION), ("POST", wire.PATH_REDEEM)):
        assert f"`{method} {path.removeprefix(wire.API_BASE)}`" in section(1), path
    assert f"`GET {wire.PATH_CALLS.removeprefix(wire.API_BASE)}/:callId`" in section(3)
    assert f"`{wire.REQUEST_ID_HEADER}`" in section(1) and f"`{wire.RETRY_AFTER_HEADER}`" in section(1)
    assert f"{wire.SIGNATURE_HEADER}: t=" in section(4) and f"{wire.WEBHOOK_ID_HEADER}: wh_" in section(4)
    assert f"pool of {inspect.signature(RepPool).parameters['size'].default} reps" in FLAT
    limits = paragraph("**Rate limits.**")
    assert f"at most {api.RATE_LIMIT_RETRIES} times and {num(api.RATE_LIMIT_WAIT)} s in all" in limits
