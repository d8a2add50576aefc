"""Every parser of what a peer sends turns any input into its result or a ProtocolError (a typed
error with a message), never another exception: fuzzed with hypothesis. CI runs a bounded number
of examples; ``benchmarks/fuzz_parsers.py`` runs the long version."""

import hashlib
import hmac
import json
import math
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from athos_load import wire as p
from athos_load.wire import ClientProtocol, ErrorCode, ProtocolError

SERVER_TYPES = ["ready", "personaSpeaking", "userSpeaking", "reconnected", "ended", "error", "novel"]
CLIENT_TYPES = ["join", "resume", "hangup"]
KEYS = [
    "type", "persona", "name", "callId", "resumeToken", "speaking", "durationSec", "reason", "code", "message",
    "token", "drillKey", "audio", "encoding", "sampleRate", "channels", "frameMs", "webhookUrl", "expiresAt",
    "error", "calls", "cursor", "id", "status", "score", "endedAt", "scoredAt", "transcript", "speaker",
    "start", "end", "text", "data", "createdAt", "agent", "agency", "agentId", "agencyId", "platformAgentId",
    "firstName", "lastName", "connectionUrl", "connectionTicket", "sessionId", "nextCursor", "role", "content",
    "startTime", "endTime", "overallScore", "event", "success", "occurredAt", "requestId", "reason", "details",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from([*SERVER_TYPES, *CLIENT_TYPES, "scored", "in_progress", "call.scored", "2026-01-01T00:00:00Z"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=6)
    ),
    max_leaves=20,
)
messages = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


def as_text(obj: object) -> str:
    return json.dumps(obj, default=str, allow_nan=True)


# bad JSON of every kind: garbage, huge numbers, deep nesting, non-objects
garbage = (
    st.text(max_size=200)
    | st.binary(max_size=200)
    | st.integers(min_value=1, max_value=100_000).map(lambda n: "[" * n + "]" * n)
    | st.integers(min_value=1, max_value=100_000).map(lambda n: '{"a":' * n + "1" + "}" * n)
    | st.integers(min_value=300, max_value=5000).map(
        lambda n: '{"type":"ended","callId":"c","durationSec":' + "9" * n + "}"
    )
    | messages.map(as_text)
)

PARSERS = [
    p.parse_server_message,
    p.parse_client_message,
    p.MintRequest.parse,
    p.MintResponse.parse,
    p.parse_call,
    p.parse_call_list,
    p.ScoredEvent.parse,
    p.RegisterAgentRequest.parse,
    p.Agent.parse,
    p.RedeemRequest.parse,
    p.Redemption.parse,
    p.parse_error_body,
]
EXAMPLES = int(os.environ.get("ATHOS_FUZZ_EXAMPLES", "300"))  # benchmarks/fuzz_parsers.py sets more
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(PARSERS), garbage)
def test_a_parser_answers_any_input_with_a_result_or_a_protocol_error(parser, text):
    try:
        parser(text)
    except ProtocolError as exc:
        assert str(exc)


@FUZZ
@given(st.lists(messages.map(as_text) | garbage, min_size=1, max_size=6))
def test_the_client_protocol_never_raises_and_every_failure_has_a_code(texts):
    protocol = ClientProtocol("token", "drill")
    protocol.connect(0.0)
    for i, text in enumerate(texts):
        protocol.receive_text(text, float(i))
    events = protocol.events_received()
    for event in events:
        if isinstance(event, p.Error):
            assert isinstance(event.code, str) and event.code
        if isinstance(event, p.Ended):
            assert math.isfinite(event.duration_sec) and isinstance(event.reason, str)


@FUZZ
@given(st.text(max_size=120), st.binary(max_size=64))
def test_a_webhook_signature_header_is_checked_or_refused(header, body):
    try:
        p.verify_webhook("secret", header, body, now=1_800_000_000.0)
    except p.SignatureError as exc:
        assert exc.reason in ("missing", "malformed", "bad_signature", "stale")


@FUZZ
@given(st.integers(min_value=-(10**400), max_value=10**400) | st.text(max_size=40), st.binary(max_size=64))
def test_a_signed_webhook_with_any_t_is_accepted_or_refused_never_raised(t, body):
    """Signed correctly whatever ``t=`` says (a 400-digit integer included): refused as stale or
    malformed, never an OverflowError (a ``,`` in it cuts the header: then the MAC cannot match)."""
    stamp = str(t)
    mac = hmac.new(b"secret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    now = 1_800_000_000.0
    try:
        assert p.verify_webhook("secret", f"t={stamp},v1={mac}", body, now=now) == int(stamp)
        assert abs(now - int(stamp)) <= 300
    except p.SignatureError as exc:
        assert exc.reason in ("malformed", "stale") or ("," in stamp and exc.reason == "bad_signature")


def test_a_huge_timestamp_is_refused():
    body = b'{"event":"call.scored"}'
    for t in (10**400, 10**399 + 7, 1_800_000_000 * 10**12):
        header = p.sign_webhook("secret", t, body)
        try:
            p.verify_webhook("secret", header, body, now=1_800_000_000.0)
        except p.SignatureError as exc:
            assert exc.reason in ("malformed", "stale")
        else:
            raise AssertionError(f"t={t} accepted")


def test_an_error_body_is_always_an_error():
    for text in ("", "[]", '{"error": []}', '{"error": {"code": 5}}', "x" * 10_000, "[" * 100_000):
        error = p.parse_error_body(text)
        assert isinstance(error, p.ApiErrorBody) and error.code
    error = p.parse_error_body('{"error": {"code": "INVALID_API_KEY", "message": "no", "requestId": "req_1"}}')
    assert error.code == ErrorCode.INVALID_API_KEY and error.request_id == "req_1"
