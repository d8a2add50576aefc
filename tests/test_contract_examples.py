"""The public contract's own examples (tests/data/athos_contract/, from the Athos External API's
OpenAPI document and guides) played byte for byte through the tool's parsers and its webhook
receiver: what Athos documents, the tool reads. No network."""

import time
from pathlib import Path

import pytest

from athos_load.api import ScoreBoard, WebhookReceiver
from athos_load.wire import (
    Agent,
    ErrorCode,
    MintRequest,
    MintResponse,
    RedeemRequest,
    Redemption,
    RegisterAgentRequest,
    ScoredEvent,
    parse_call,
    parse_call_list,
    parse_error_body,
    reason_label,
    sign_webhook,
    verify_webhook,
)

EXAMPLES = Path(__file__).parent / "data" / "athos_contract"
SECRET = "whsec_example"


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def test_the_roster_and_session_examples_parse():
    request = RegisterAgentRequest.parse(example("register_agent_request.json"))
    assert (request.first_name, request.platform_agent_id, request.platform_agency_id) == (
        "Dana",
        "rep_8842",
        "acme-7731",
    )
    agent = Agent.parse(example("register_agent_response.json"))
    assert agent.id == "athos_agent_bR4kQ2wZ9Lp0nH3xVq1Yt" and agent.agency_id == "athos_agency_V1StGXR8Z5jdHi6B-myT"
    exists = parse_error_body(example("agent_already_exists.json"))
    assert exists.code == ErrorCode.AGENT_ALREADY_EXISTS and exists.details["agentId"] == agent.id
    assert MintRequest.parse(example("mint_request.json")) == MintRequest(platform_agent_id="rep_8842")
    assert MintResponse.parse(example("mint_response.json")).expires_at == 1780682700.0
    assert RedeemRequest.parse(example("redeem_request.json")) == RedeemRequest("ma-full-sale", "Advanced")
    redemption = Redemption.parse(example("redeem_response.json"))
    assert redemption.call_id.startswith("athos_call_") and redemption.persona_name == "James"
    assert (redemption.connection_url, redemption.connection_ticket) == (
        "wss://realtime.example/opaque",
        "opaque-ticket",
    )


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("error_call_not_found.json", ErrorCode.CALL_NOT_FOUND),
        ("error_service_unavailable.json", ErrorCode.SERVICE_UNAVAILABLE),
    ],
)
def test_the_error_envelope_examples_keep_their_code_and_request_id(name, code):
    error = parse_error_body(example(name))
    assert error.code is code and error.request_id == "req_2f8c1e94-3b6a-4d20-9a7e-1c5f0b8e2d44" and error.message


def test_the_list_and_detail_examples_parse():
    calls, cursor = parse_call_list(example("list_calls_response.json"))
    assert [c.id for c in calls] == ["athos_call_GZ1DjOkZv_VEPoE-CJ8mp"] and cursor == "eyJ0IjoxNzQ5…"
    assert calls[0].status == "scored" and calls[0].ended_at < calls[0].scored_at and calls[0].duration_sec == 37
    detail = parse_call(example("call_detail_response.json"))
    assert detail.score == 82 and detail.summary.startswith("Prospect") and detail.feedback
    assert [(s.speaker, s.text) for s in detail.transcript] == [
        ("assistant", "Hey."),
        ("user", "Hi James, how are you?"),
    ]


def test_the_webhook_examples_verify_and_parse_byte_for_byte():
    for name in ("webhook_scored.json", "webhook_not_scored.json"):
        body = example(name)  # the exact bytes, pretty-printed as documented, trailing newline and all
        t = 1780682954
        header = sign_webhook(SECRET, t, body)
        assert verify_webhook(SECRET, header, body, now=t + 299) == t
        event = ScoredEvent.parse(body)
        assert event.call_id == "athos_call_GZ1DjOkZv_VEPoE-CJ8mp" and event.agent_id.startswith("athos_agent_")
        assert event.request_id.startswith("req_") and event.occurred_at == 1780682954.0
    failed = ScoredEvent.parse(example("webhook_not_scored.json"))
    assert (failed.success, failed.reason, reason_label(failed.reason)) == (
        False,
        "SCORING_INCOMPLETE",
        "SCORING_INCOMPLETE",
    )
    assert reason_label("A_REASON_ADDED_LATER") == "other"  # the list is append-only: labels stay bounded
    assert ScoredEvent.parse(example("webhook_scored.json")).success and b"score" not in example(
        "webhook_scored.json"
    ).replace(b"call.scored", b"")


def test_the_receiver_acks_counts_failures_and_deduplicates_on_the_webhook_id():
    board = ScoreBoard()
    receiver = WebhookReceiver(board, SECRET)  # handle() judges a delivery without a socket
    now = time.time()
    scored, failed = example("webhook_scored.json"), example("webhook_not_scored.json")
    assert receiver.handle(scored, sign_webhook(SECRET, int(now), scored), now, "wh_1") == (200, "accepted")
    # the retry about 5 minutes later: same id, same body, a fresh t; handed on once
    later = now + 300
    assert receiver.handle(scored, sign_webhook(SECRET, int(later), scored), later, "wh_1") == (200, "duplicate")
    score = board.wait("athos_call_GZ1DjOkZv_VEPoE-CJ8mp", timeout=0)
    assert score is not None and score.failed is None and score.score is None  # the webhook never carries it
    assert receiver.handle(failed, sign_webhook(SECRET, int(now), failed), now, "wh_2") == (200, "accepted")
    assert board.wait("athos_call_GZ1DjOkZv_VEPoE-CJ8mp", timeout=0).failed == "SCORING_INCOMPLETE"
    assert receiver.counts == {"accepted": 2, "duplicate": 1, "not_scored": 1}
    stale = now - 301
    assert receiver.handle(scored, sign_webhook(SECRET, int(stale), scored), now, "wh_3") == (401, "stale")
