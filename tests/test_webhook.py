"""The webhook receiver over real HTTP on loopback, and the score board it feeds."""

import contextlib
import socket
import time

import gevent
import pytest
import requests

from athos_load.api import Score, ScoreBoard, WebhookReceiver
from athos_load.wire import SIGNATURE_HEADER, WEBHOOK_ID_HEADER, ScoredEvent, sign_webhook

SECRET = "whsec_test"


@pytest.fixture
def receiver():
    board = ScoreBoard()
    rx = WebhookReceiver(board, SECRET, host="127.0.0.1", port=0).start()
    yield rx
    rx.stop()


def deliver(rx, event_id="wh_1", call_id="athos_call_1", *, secret=SECRET, ts=None, body=None, header=None):
    body = body if body is not None else ScoredEvent(call_id, True, time.time()).serialize().encode()
    ts = int(time.time()) if ts is None else ts
    headers = {"Content-Type": "application/json", WEBHOOK_ID_HEADER: event_id}
    sig = header if header is not None else sign_webhook(secret, ts, body)
    if sig:
        headers[SIGNATURE_HEADER] = sig
    return requests.post(rx.url, data=body, headers=headers, timeout=5)


def test_valid_delivery_reaches_the_waiter(receiver):
    waiter = receiver.board.expect("athos_call_1")
    response = deliver(receiver)
    assert response.status_code == 200
    score = waiter.get(timeout=5)
    assert score.call_id == "athos_call_1" and score.score is None and score.via == "webhook" and not score.failed
    assert receiver.counts["accepted"] == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"secret": "wrong"}, "bad_signature"),
        ({"ts": int(time.time()) - 3600}, "stale"),
        ({"header": ""}, "missing"),
        ({"header": "v1=deadbeef"}, "malformed"),
    ],
)
def test_bad_deliveries_are_rejected_and_counted(receiver, kwargs, reason):
    waiter = receiver.board.expect("athos_call_1")
    response = deliver(receiver, **kwargs)
    assert response.status_code == 401
    assert receiver.counts[reason] == 1 and receiver.counts["accepted"] == 0
    assert not waiter.ready()


def test_signed_garbage_is_a_400(receiver):
    assert deliver(receiver, body=b'{"type":"call.other"}').status_code == 400
    assert receiver.counts["bad_body"] == 1


def test_replayed_event_id_is_counted_once(receiver):
    seen: list[Score] = []
    receiver.board.listeners.append(seen.append)
    assert deliver(receiver, "evt_9").status_code == 200
    assert deliver(receiver, "evt_9").status_code == 200  # 2xx so the sender stops retrying
    assert receiver.counts["accepted"] == 1 and receiver.counts["duplicate"] == 1
    assert len(seen) == 1


def test_wrong_path_and_method(receiver):
    base = receiver.url.rsplit("/", 2)[0]
    assert requests.post(base + "/nope", data=b"{}", timeout=5).status_code == 404
    assert requests.get(receiver.url, timeout=5).status_code == 405


def test_score_that_arrives_before_the_waiter_is_kept():
    board = ScoreBoard(max_unclaimed=2)
    board.deliver(Score("a", 1.0, 0.0, "poll"))
    assert board.wait("a", timeout=0.1).score == 1.0
    for call in ("b", "c", "d"):
        board.deliver(Score(call, 1.0, 0.0, "poll"))
    assert board.wait("b", timeout=0.05) is None  # the oldest unclaimed is evicted: memory is bounded
    assert board.wait("d", timeout=0.05) is not None


def test_wait_times_out_and_forgets():
    board = ScoreBoard()
    started = time.monotonic()
    assert board.wait("never", timeout=0.2) is None
    assert 0.15 < time.monotonic() - started < 5
    assert "never" not in board.waiting


def test_score_is_handed_over_across_greenlets():
    board = ScoreBoard()
    waiter = gevent.spawn(board.wait, "x", 5)
    gevent.sleep(0.01)
    board.deliver(Score("x", 50.0, 1.0, "webhook"))
    assert waiter.get(timeout=5).score == 50.0


def test_score_arriving_as_the_waiter_is_killed_is_kept_for_the_next_waiter():
    board = ScoreBoard()
    waiter = gevent.spawn(board.wait, "x", 5)
    gevent.sleep(0.01)
    waiter.kill(block=False)  # the run stops this user...
    board.deliver(Score("x", 70.0, 1.0, "webhook"))  # ...in the same loop turn its score arrives
    gevent.sleep(0.01)
    assert waiter.dead
    assert board.wait("x", timeout=0.5).score == 70.0  # the drain's wait still gets it


# -- a receiver anyone can reach: bounded in time, memory and connections ---------------------------


def raw(rx, data: bytes, *, wait: float = 5.0, close_write: bool = False) -> bytes:
    """Send ``data`` on a new connection and read until the receiver closes it (or ``wait`` passes)."""
    host, port = rx.url.split("/")[2].split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def post_head(rx, headers: dict[str, str]) -> bytes:
    path = "/" + rx.url.split("/", 3)[3]
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_non_ascii_signature_is_a_401_not_a_500(receiver):
    body = ScoredEvent("athos_call_1", True, time.time()).serialize().encode()
    head = post_head(receiver, {"Content-Length": str(len(body))})
    head = head.replace(b"\r\n\r\n", f"\r\n{SIGNATURE_HEADER}: t=1,v1=".encode() + "é".encode() + b"\r\n\r\n", 1)
    answer = raw(receiver, head + body)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert receiver.counts["malformed"] == 1


def test_a_signed_chunked_delivery_is_accepted(receiver):
    waiter = receiver.board.expect("athos_call_c")
    body = ScoredEvent("athos_call_c", True, time.time()).serialize().encode()
    headers = {SIGNATURE_HEADER: sign_webhook(SECRET, int(time.time()), body), WEBHOOK_ID_HEADER: "wh_c"}
    chunks = (body[i : i + 7] for i in range(0, len(body), 7))  # a generator: requests sends it chunked
    response = requests.post(receiver.url, data=chunks, headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    assert waiter.get(timeout=5).call_id == "athos_call_c" and receiver.counts["accepted"] == 1


def test_a_chunked_body_past_the_limit_is_refused():
    rx = WebhookReceiver(ScoreBoard(), SECRET, max_body=1000).start()
    try:
        chunks = (b"x" * 100 for _ in range(50))
        response = requests.post(rx.url, data=chunks, headers={SIGNATURE_HEADER: "t=1,v1=00"}, timeout=5)
        assert response.status_code == 413 and rx.counts["too_large"] == 1
    finally:
        rx.stop()


def test_a_truncated_delivery_is_a_bad_request_not_a_missing_signature(receiver):
    body = ScoredEvent("athos_call_1", True, time.time()).serialize().encode()
    head = post_head(receiver, {"Content-Length": str(len(body)), SIGNATURE_HEADER: sign_webhook(SECRET, 1, body)})
    answer = raw(receiver, head + body[:20], close_write=True)
    assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer[:200]
    assert receiver.counts["bad_request"] == 1 and receiver.counts["missing"] == 0


@pytest.mark.parametrize("slow", ["headers", "body", "silence"])
def test_a_slow_sender_is_cut_off_at_the_request_timeout(slow):
    rx = WebhookReceiver(ScoreBoard(), SECRET, request_timeout=0.5).start()
    try:
        body = ScoredEvent("athos_call_1", True, time.time()).serialize().encode()
        head = post_head(rx, {"Content-Length": str(len(body)), SIGNATURE_HEADER: sign_webhook(SECRET, 1, body)})
        sent = {"headers": head[:30], "body": head + body[:10], "silence": b""}[slow]
        started = time.monotonic()
        answer = raw(rx, sent, wait=5.0)
        assert time.monotonic() - started < 3.0  # closed by the receiver, not by our own wait
        assert answer in (b"", b"HTTP/1.1 408") or answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert rx.counts["timeout"] == 1, rx.counts
    finally:
        rx.stop()


def test_many_idle_connections_are_capped_and_a_delivery_still_gets_through():
    rx = WebhookReceiver(ScoreBoard(), SECRET, request_timeout=0.5, max_connections=4).start()
    host, port = rx.url.split("/")[2].split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]  # say nothing
    try:
        peak = 0
        for _ in range(20):
            gevent.sleep(0.05)
            peak = max(peak, rx.connections)
        assert 0 < peak <= 4
        waiter = rx.board.expect("athos_call_1")
        response = deliver(rx)  # waits behind the idle ones, which are cut off 0.5 s at a time
        assert response.status_code == 200 and waiter.get(timeout=5).call_id == "athos_call_1"
        assert rx.counts["timeout"] >= 16  # every idle connection served was counted
    finally:
        for sock in idle:
            sock.close()
        rx.stop()
