"""Athos REST and the ``call.scored`` webhook, from the load generator's side.

* :class:`AthosApi`: mint session tokens, read calls (``GET /v1/calls[/:id]``).
* :class:`ScoreBoard`: where ``ended`` calls wait for their score, matched by callId, whichever way
  the score arrives first.
* :class:`WebhookReceiver`: a gevent WSGI server inside the Locust process that verifies signature
  and timestamp, rejects bad deliveries with 4xx, de-duplicates by event id (delivery is at least
  once) and hands ``call.scored`` to the board.
* :class:`ScorePoller`: the fallback when no webhook can reach the tool: polls ``GET /v1/calls``.

Message shapes come from :mod:`athos_load.wire`; this module only moves them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.pool
import requests
import urllib3
from gevent.pywsgi import WSGIHandler, WSGIServer

from .wire import (
    CURSOR_NOW,
    PATH_CALLS,
    PATH_SESSIONS,
    PATH_WEBHOOK,
    SIGNATURE_HEADER,
    CallRecord,
    CallStatus,
    ErrorCode,
    MintRequest,
    MintResponse,
    RemoteProtocolError,
    ScoredEvent,
    SignatureError,
    authority,
    parse_call,
    parse_call_list,
    parse_error_body,
    verify_webhook,
)

logger = logging.getLogger(__name__)
MAX_WEBHOOK_BYTES = 1_000_000  # a call.scored is a few hundred bytes
MAX_BODY_BYTES = 8 << 20  # a REST answer past this is broken or hostile (a page of 500 calls is ~0.5 MB)
_T = TypeVar("_T")


class ApiError(Exception):
    """A REST call failed; ``code`` is the platform's error code (or a client-side one)."""

    def __init__(self, code: ErrorCode | str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class AthosApi:
    """The platform's REST API. One per Locust user is fine; the HTTP connection is kept alive.

    Every request has a total deadline, ``timeout``: connecting, sending and the whole answer.
    requests' own timeout bounds each socket read only, so a platform that trickles its answer a
    byte at a time would hold a user for the whole run; a gevent timeout around the request bounds
    it whole. An answer is read up to ``max_body`` bytes, and a larger one is refused unread. Every
    failure is an :class:`ApiError` with a code: the platform's, ``request_timeout``,
    ``connect_failed`` or, for an answer that is not what the protocol says, ``remote_protocol``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        verify: bool | str = True,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        self.verify = verify  # a CA bundle path for a private CA; per request, since REQUESTS_CA_BUNDLE
        # in the environment would override a session-wide setting
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {api_key}"

    def mint_token(self, drill_key: str, webhook_url: str | None = None) -> MintResponse:
        body = MintRequest(drill_key, webhook_url).serialize()
        what = f"POST {PATH_SESSIONS}"
        answer = self._request("POST", PATH_SESSIONS, data=body, headers={"Content-Type": "application/json"})
        return _parsed(what, MintResponse.parse, answer)

    def get_call(self, call_id: str) -> CallRecord:
        return _parsed(f"GET {PATH_CALLS}/:id", parse_call, self._request("GET", f"{PATH_CALLS}/{call_id}"))

    def list_calls(
        self, *, status: CallStatus | None = None, after: str | None = None, limit: int = 100
    ) -> tuple[list[CallRecord], str | None]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status.value
        if after is not None:
            params["after"] = after
        return _parsed(f"GET {PATH_CALLS}", parse_call_list, self._request("GET", PATH_CALLS, params=params))

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> bytes:
        """The answer's body, within the deadline and the size limit; an ApiError otherwise."""
        what = f"{method} {path}"
        deadline = gevent.Timeout(self.timeout)
        deadline.start()
        try:
            response = self._http.request(
                method, self.base_url + path, timeout=self.timeout, verify=self.verify, stream=True, **kwargs
            )
            try:
                body = response.raw.read(self.max_body + 1, decode_content=True)
            finally:
                response.close()
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            self._http.close()  # the connection was cut mid-answer: none of it can be reused
            raise ApiError(ErrorCode.REQUEST_TIMEOUT, f"{what}: no whole answer within {self.timeout:g}s") from None
        except requests.Timeout as exc:
            raise ApiError(ErrorCode.REQUEST_TIMEOUT, f"{what}: {exc}") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(ErrorCode.CONNECT_FAILED, f"{what}: {exc}") from None
        finally:
            deadline.close()
        if len(body) > self.max_body:
            raise ApiError(
                ErrorCode.REMOTE_PROTOCOL, f"{what}: an answer over {self.max_body} bytes", response.status_code
            )
        if response.status_code >= 400:
            err = parse_error_body(body)
            raise ApiError(err.code, f"{what}: {response.status_code}: {err.message}", response.status_code)
        return body


def _parsed(what: str, parse: Callable[[bytes], _T], body: bytes) -> _T:
    """``parse(body)``; an answer the protocol does not allow is the platform's error, with a code."""
    try:
        return parse(body)
    except RemoteProtocolError as exc:
        raise ApiError(ErrorCode.REMOTE_PROTOCOL, f"{what}: {exc}") from None


# -- scores ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Score:
    call_id: str
    score: float
    at: float  # time.monotonic() when the tool learned of it
    via: str  # "webhook" | "poll"


class ScoreBoard:
    """Calls that ended wait here for their score, by callId.

    A score may arrive before anyone waits for it (a fast scorer, a webhook racing the ``ended``
    event): it is kept, bounded in number, so nothing is lost and memory stays flat.
    """

    def __init__(self, max_unclaimed: int = 10_000) -> None:
        self._waiting: dict[str, gevent.event.AsyncResult] = {}
        self._unclaimed: OrderedDict[str, Score] = OrderedDict()
        self._max_unclaimed = max_unclaimed
        self.listeners: list[Callable[[Score], None]] = []

    def expect(self, call_id: str) -> gevent.event.AsyncResult:
        """The result that will hold the call's :class:`Score`; call before waiting."""
        result = self._waiting.get(call_id)
        if result is None:
            result = self._waiting[call_id] = gevent.event.AsyncResult()
            early = self._unclaimed.pop(call_id, None)
            if early is not None:
                result.set(early)
        return result

    def wait(self, call_id: str, timeout: float) -> Score | None:
        """Block until the call is scored or ``timeout`` passes; forgets the call either way."""
        result = self.expect(call_id)
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            return None
        except BaseException:
            # Killed (the run is stopping) in the same loop turn the score arrived: keep it for
            # whoever waits next (the score drain), or it would be counted missing.
            if result.successful():
                self._unclaimed[call_id] = result.value
            raise
        finally:
            self._waiting.pop(call_id, None)

    def forget(self, call_id: str) -> None:
        """Stop waiting for a call (its waiter gave up or was served elsewhere)."""
        self._waiting.pop(call_id, None)

    @property
    def waiting(self) -> Iterable[str]:
        return tuple(self._waiting)

    def deliver(self, score: Score) -> None:
        for listener in self.listeners:
            listener(score)
        result = self._waiting.get(score.call_id)
        if result is not None:
            if not result.ready():
                result.set(score)
            return
        self._unclaimed[score.call_id] = score
        while len(self._unclaimed) > self._max_unclaimed:
            self._unclaimed.popitem(last=False)


class WebhookReceiver:
    """Receives ``call.scored`` on ``POST <path>`` and hands it to a :class:`ScoreBoard`.

    It faces whatever can reach its port, so nothing a sender does costs more than bounded time
    and memory: a body past ``max_body`` is refused (413), each request from its first byte to the
    answer must be done within ``request_timeout`` (a sender that trickles its headers or body, or
    opens a connection and says nothing, is cut off), and at most ``max_connections`` are served at
    once (the rest wait in the listen backlog). Content-Length and chunked bodies are both read.

    ``counts`` tallies every delivery by outcome: ``accepted``, ``duplicate`` (a replayed event id:
    answered 200 so the sender stops retrying, handed on once), and the rejections ``missing``,
    ``malformed``, ``bad_signature``, ``stale`` (401), ``bad_body`` (400: signed, but not a
    ``call.scored``), ``bad_request`` (400: truncated, or not HTTP), ``too_large`` (413) and
    ``timeout`` (cut off at ``request_timeout``).
    """

    def __init__(
        self,
        board: ScoreBoard,
        secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = PATH_WEBHOOK,
        tolerance: float = 300.0,
        public_url: str | None = None,
        max_seen: int = 100_000,
        max_body: int = MAX_WEBHOOK_BYTES,
        request_timeout: float = 10.0,
        max_connections: int = 256,
    ) -> None:
        self.board = board
        self.secret = secret
        self.path = path
        self.tolerance = tolerance
        self.max_body = max_body
        self.counts: Counter[str] = Counter()
        self._seen: OrderedDict[str, None] = OrderedDict()  # event ids, oldest first, bounded
        self._max_seen = max_seen
        self._public_url = public_url
        self._connections = gevent.pool.Pool(max_connections)
        self._server = _ReceiverServer(
            (host, port), self._app, log=None, error_log=logger, spawn=self._connections,
            counts=self.counts, request_timeout=request_timeout,
        )  # fmt: skip

    @property
    def url(self) -> str:
        """Where the platform should POST: the public URL if one was given, else the bound address."""
        if self._public_url:
            return self._public_url
        host, port = self._server.address[:2]
        return f"http://{authority(host, port)}{self.path}"

    @property
    def connections(self) -> int:
        """Connections being served now (at most ``max_connections``)."""
        return len(self._connections)

    def start(self) -> WebhookReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def handle(self, body: bytes, signature: str | None, now: float) -> tuple[int, str]:
        """Judge one delivery; returns the HTTP status and outcome. Public so tests can drive it."""
        try:
            verify_webhook(self.secret, signature, body, now, self.tolerance)
        except SignatureError as exc:
            self.counts[exc.reason] += 1
            return 401, exc.reason
        try:
            event = ScoredEvent.parse(body)
        except RemoteProtocolError:
            self.counts["bad_body"] += 1
            return 400, "bad_body"
        if event.id in self._seen:
            self.counts["duplicate"] += 1
            return 200, "duplicate"
        self._seen[event.id] = None
        while len(self._seen) > self._max_seen:
            self._seen.popitem(last=False)
        self.counts["accepted"] += 1
        self.board.deliver(Score(event.call_id, event.score, time.monotonic(), "webhook"))
        return 200, "accepted"

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != self.path:
            return _respond(start_response, 404, "not_found")
        if environ.get("REQUEST_METHOD") != "POST":
            return _respond(start_response, 405, "method_not_allowed")
        body, problem = self._read_body(environ)
        if problem is not None:
            self.counts[problem] += 1
            status = {"too_large": 413, "timeout": 408}.get(problem, 400)
            return _respond(start_response, status, problem, close=True)
        signature = environ.get("HTTP_" + SIGNATURE_HEADER.upper().replace("-", "_"))
        status, outcome = self.handle(body, signature, time.time())
        return _respond(start_response, status, outcome)

    def _read_body(self, environ: dict[str, Any]) -> tuple[bytes, str | None]:
        """The whole body (Content-Length or chunked), or why there is none to judge."""
        declared = environ.get("CONTENT_LENGTH")
        try:
            length = int(declared) if declared else None
        except ValueError:
            return b"", "bad_request"
        if length is not None and length > self.max_body:
            return b"", "too_large"
        stream = environ["wsgi.input"]
        try:
            # chunked: pywsgi decodes it; read one byte past the limit to tell an oversized one
            body = stream.read(self.max_body + 1 if length is None else length)
        except (OSError, ValueError):  # a broken chunk, a reset
            return b"", "bad_request"
        except gevent.Timeout:  # the request's deadline (_BoundedHandler) passed while the body trickled in
            # pywsgi would read the rest of the body after the answer, with no deadline left: mark
            # the input as read to the end, so it answers and closes (Connection: close) at once
            stream.content_length, stream.chunked_input = stream.position, False
            return b"", "timeout"
        if len(body) > self.max_body:
            return b"", "too_large"
        if length is not None and len(body) < length:
            return b"", "bad_request"  # the sender stopped short of its Content-Length
        return body, None


class _ReceiverServer(WSGIServer):
    """pywsgi with TCP_NODELAY (it writes a response's headers and body separately; without it the
    second write can wait ~40 ms for a delayed ACK, and the platform sees a slow 200), and with
    each request bounded in time by :class:`_BoundedHandler`."""

    def __init__(self, *args: Any, counts: Counter[str], request_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, handler_class=_BoundedHandler, **kwargs)
        self.counts = counts
        self.request_timeout = request_timeout

    def handle(self, sock: socket.socket, address: Any) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


class _BoundedHandler(WSGIHandler):
    """Each request, from waiting for its first line to the answer, within the server's
    ``request_timeout``; a connection past it is closed. A keep-alive connection that goes quiet
    after a request is simply closed; one that never finished a request is counted ``timeout``."""

    server: _ReceiverServer
    _served = 0

    def handle_one_request(self) -> Any:
        self.requestline = None
        deadline = gevent.Timeout(self.server.request_timeout)
        deadline.start()
        try:
            result = super().handle_one_request()
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            if self.requestline or not self._served:
                self.server.counts["timeout"] += 1
            return None  # close the connection
        finally:
            deadline.close()
        if result is True:
            self._served += 1
        elif isinstance(result, tuple):  # pywsgi refused the request itself (a bad request line or header)
            self.server.counts["bad_request"] += 1
        return result


def _respond(start_response: Callable[..., Any], status: int, outcome: str, close: bool = False) -> list[bytes]:
    """A small JSON answer; ``close``: end the connection after it (what is left of the request is unread)."""
    body = f'{{"outcome":"{outcome}"}}'.encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [body]


class ScorePoller:
    """Polls ``GET /v1/calls?status=scored`` and delivers scores of calls the board waits for.

    The fallback when the platform cannot reach a webhook on the load generator. One per process.
    It starts from the platform's "now" (``after=now``), so it never reads the platform's history,
    and each pass follows the cursor until a page comes back empty (at most ``max_pages``), so a
    platform that caps its pages below ``page_limit`` cannot make it fall behind. Any failure, of
    whatever kind, is counted (``errors``, and by code) and polling goes on: after ``interval``,
    doubled at each failure in a row up to ``max_interval``, so a platform in trouble is not
    hammered, and back to ``interval`` after the first pass that works.
    """

    def __init__(
        self,
        api: AthosApi,
        board: ScoreBoard,
        *,
        interval: float = 1.0,
        max_interval: float = 30.0,
        page_limit: int = 500,
        max_pages: int = 100,
    ) -> None:
        self.api = api
        self.board = board
        self.interval = interval
        self.max_interval = max(interval, max_interval)
        self.page_limit = page_limit
        self.max_pages = max_pages
        self.counts: Counter[str] = Counter()  # polls, pages, delivered, errors, and errors by code
        self._cursor: str | None = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> ScorePoller:
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    @property
    def alive(self) -> bool:
        return self._greenlet is not None and not self._greenlet.dead

    def poll_once(self) -> int:
        """One pass over every page of newly scored calls; returns how many were delivered."""
        if self._cursor is None:
            self.counts["pages"] += 1
            _, self._cursor = self.api.list_calls(after=CURSOR_NOW, limit=1)
            if self._cursor is None:
                raise ApiError(ErrorCode.REMOTE_PROTOCOL, f"GET {PATH_CALLS}?after={CURSOR_NOW} returned no cursor")
        self.counts["polls"] += 1
        delivered = 0
        for _ in range(self.max_pages):
            calls, cursor = self.api.list_calls(status=CallStatus.SCORED, after=self._cursor, limit=self.page_limit)
            self.counts["pages"] += 1
            now = time.monotonic()
            for call in calls:
                if call.score is not None:
                    self.board.deliver(Score(call.id, call.score, now, "poll"))
                    delivered += 1
            if cursor is not None:
                self._cursor = cursor
            if not calls:
                break
        else:
            logger.warning("polling %s: still more after %d pages; scores may arrive late", PATH_CALLS, self.max_pages)
        self.counts["delivered"] += delivered
        return delivered

    def _run(self) -> None:
        delay = self.interval
        while True:
            try:
                self.poll_once()
                delay = self.interval
            except Exception as exc:  # noqa: BLE001 - any answer, however broken, is counted, not fatal
                self.counts["errors"] += 1
                self.counts[str(exc.code) if isinstance(exc, ApiError) else "internal"] += 1
                if delay == self.interval or logger.isEnabledFor(logging.DEBUG):  # once per run of failures
                    logger.warning(
                        "polling %s failed (next tries back off to %gs): %s", PATH_CALLS, self.max_interval, exc
                    )
                gevent.sleep(delay)
                delay = min(self.max_interval, delay * 2)
                continue
            gevent.sleep(delay)
