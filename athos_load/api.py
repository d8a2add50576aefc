"""The Athos External API and the ``call.scored`` webhook, from the load generator's side.

* :class:`AthosApi`: register reps, mint and redeem session tokens, read calls
  (``GET /calls[/:callId]``), as the public contract documents them (docs/protocol.md).
* :class:`RepPool`: the load test's reps, registered once per process and reused.
* :class:`ScoreBoard`: where ``ended`` calls wait for their ``call.scored``, matched by callId,
  whichever way it arrives first.
* :class:`WebhookReceiver`: a gevent WSGI server inside the Locust process that verifies signature
  and timestamp, rejects bad deliveries with 4xx, de-duplicates by ``X-Athos-Webhook-Id`` (a failed
  delivery is retried) and hands ``call.scored`` to the board.
* :class:`ScorePoller`: the backstop when no webhook can reach the tool: re-scans ``GET /calls``.

Message shapes come from :mod:`athos_load.wire`; this module only moves them.
"""

from __future__ import annotations

import contextlib
import email.utils
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
import gevent.lock
import gevent.pool
import requests
import urllib3
from gevent.pywsgi import WSGIHandler, WSGIServer

from .wire import (
    PATH_AGENTS,
    PATH_CALLS,
    PATH_REDEEM,
    PATH_SESSION,
    PATH_WEBHOOK,
    REQUEST_ID_HEADER,
    RETRY_AFTER_HEADER,
    SIGNATURE_HEADER,
    SOURCE_ROLEPLAY,
    WEBHOOK_ID_HEADER,
    Agent,
    CallRecord,
    ErrorCode,
    MintRequest,
    MintResponse,
    RedeemRequest,
    Redemption,
    RegisterAgentRequest,
    RemoteProtocolError,
    ScoredEvent,
    SignatureError,
    authority,
    parse_call,
    parse_call_list,
    parse_error_body,
    verify_webhook,
)
from .wire.fields import iso

logger = logging.getLogger(__name__)
MAX_WEBHOOK_BYTES = 1_000_000  # a call.scored is a few hundred bytes
MAX_BODY_BYTES = 8 << 20  # a REST answer past this is broken or hostile (a page of 100 calls is ~50 kB)
MAX_PAGE = 100  # GET /calls: the documented page size limit
RATE_LIMIT_RETRIES = 3  # 429s honoured per request before it fails as rate_limited
RATE_LIMIT_WAIT = 10.0  # seconds of Retry-After a request may wait in all
_T = TypeVar("_T")


class ApiError(Exception):
    """A REST call failed; ``code`` is the platform's error code (or a client-side one) and
    ``request_id`` the platform's ``X-Athos-Request-Id`` for it (quoted in every report of it)."""

    def __init__(
        self, code: ErrorCode | str, message: str, status: int | None = None, request_id: str | None = None
    ) -> None:
        text = f"{code}: {message}" + (f" (request {request_id})" if request_id else "")
        super().__init__(text)
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.details: dict[str, Any] = {}


class AthosApi:
    """The External API at ``base_url`` (the platform's origin; the paths carry ``/api/external/v1``).
    One per Locust user is fine; the HTTP connection is kept alive.

    Every request has a total deadline, ``timeout``: connecting, sending and the whole answer.
    requests' own timeout bounds each socket read only, so a platform that trickles its answer a
    byte at a time would hold a user for the whole run; a gevent timeout around the request bounds
    it whole. An answer is read up to ``max_body`` bytes, and a larger one is refused unread. A
    ``429`` is retried after its ``Retry-After`` (at most ``RATE_LIMIT_RETRIES`` times and
    ``RATE_LIMIT_WAIT`` seconds in all). Every failure is an :class:`ApiError` with a code (the
    platform's, ``rate_limited``, ``request_timeout``, ``connect_failed`` or, for an answer that is
    not what the contract says, ``remote_protocol``) and the platform's request id.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        verify: bool | str = True,
        max_body: int = MAX_BODY_BYTES,
        reps: RepPool | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        self.verify = verify  # a CA bundle path for a private CA; per request, since REQUESTS_CA_BUNDLE
        # in the environment would override a session-wide setting
        self.reps = reps or RepPool()
        self.rate_limited = 0  # 429s this client waited out
        self._http = requests.Session()
        self._api_key = api_key

    # -- the roster and sessions -------------------------------------------------------------------

    def register_agent(self, request: RegisterAgentRequest) -> Agent:
        """``POST /agents``; a rep already registered (409 ``AGENT_ALREADY_EXISTS``) is reused."""
        try:
            answer = self._request("POST", PATH_AGENTS, json_body=request.serialize())
        except ApiError as exc:
            existing = exc.details.get("agentId")
            if exc.code == ErrorCode.AGENT_ALREADY_EXISTS and isinstance(existing, str):
                agency = exc.details.get("agencyId")
                return Agent(existing, agency if isinstance(agency, str) else "", request.platform_agent_id)
            raise
        return _parsed(f"POST {PATH_AGENTS}", Agent.parse, answer)

    def mint_token(self, platform_agent_id: str | None = None) -> MintResponse:
        """``POST /session`` for a rep (default: the next of :attr:`reps`, registered on first use)."""
        rep = platform_agent_id or self.reps.next(self)
        answer = self._request("POST", PATH_SESSION, json_body=MintRequest(platform_agent_id=rep).serialize())
        return _parsed(f"POST {PATH_SESSION}", MintResponse.parse, answer)

    def redeem(self, token: str, drill_key: str) -> Redemption:
        """``POST /roleplay/session`` with the session token: what the SDK's ``connect()`` does."""
        body = RedeemRequest(drill_key).serialize()
        answer = self._request("POST", PATH_REDEEM, json_body=body, bearer=token)
        return _parsed(f"POST {PATH_REDEEM}", Redemption.parse, answer)

    # -- calls -------------------------------------------------------------------------------------

    def get_call(self, call_id: str) -> CallRecord:
        return _parsed(f"GET {PATH_CALLS}/:id", parse_call, self._request("GET", f"{PATH_CALLS}/{call_id}"))

    def list_calls(
        self, *, since: float, until: float | None = None, cursor: str | None = None, limit: int = MAX_PAGE
    ) -> tuple[list[CallRecord], str | None]:
        """One page of the scored calls that ended in [``since``, ``until``] (unix seconds), newest
        first, and the cursor of the next page (None on the last)."""
        params: dict[str, Any] = {"source": SOURCE_ROLEPLAY, "from": iso(since), "limit": min(limit, MAX_PAGE)}
        if until is not None:
            params["to"] = iso(until)
        if cursor is not None:
            params["cursor"] = cursor
        return _parsed(f"GET {PATH_CALLS}", parse_call_list, self._request("GET", PATH_CALLS, params=params))

    def close(self) -> None:
        self._http.close()

    # -- HTTP --------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, json_body: str | None = None, bearer: str | None = None, **kwargs: Any
    ) -> bytes:
        """The answer's body; a 429 waited out (bounded); an ApiError otherwise."""
        headers = {"Authorization": f"Bearer {bearer or self._api_key}"}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            kwargs["data"] = json_body
        waited = 0.0
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                return self._once(method, path, headers, **kwargs)
            except ApiError as exc:
                if exc.status != 429 or attempt == RATE_LIMIT_RETRIES:
                    raise
                wait = exc.details.get(RETRY_AFTER_HEADER)
                if not isinstance(wait, float) or waited + wait > RATE_LIMIT_WAIT:
                    raise
                self.rate_limited += 1
                waited += wait
                gevent.sleep(wait)
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> bytes:
        """One request within the deadline and the size limit."""
        what = f"{method} {path}"
        deadline = gevent.Timeout(self.timeout)
        deadline.start()
        try:
            response = self._http.request(
                method, self.base_url + path, headers=headers, timeout=self.timeout, verify=self.verify,
                stream=True, **kwargs,
            )  # fmt: skip
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
        status = response.status_code
        request_id = response.headers.get(REQUEST_ID_HEADER)
        if len(body) > self.max_body:
            raise ApiError(
                ErrorCode.REMOTE_PROTOCOL, f"{what}: an answer over {self.max_body} bytes", status, request_id
            )
        if status >= 400:
            err = parse_error_body(body)
            code = err.code
            if status == 429 and code == ErrorCode.REMOTE_PROTOCOL:
                code = ErrorCode.RATE_LIMITED  # Athos documents no code for a 429: ours
            exc = ApiError(code, f"{what}: {status}: {err.message}", status, request_id or err.request_id)
            exc.details = dict(err.details)
            if status == 429:
                exc.details[RETRY_AFTER_HEADER] = retry_after(response.headers.get(RETRY_AFTER_HEADER), time.time())
            raise exc
        return body


def retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit() and len(value) <= 9:
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    return None


def _parsed(what: str, parse: Callable[[bytes], _T], body: bytes) -> _T:
    """``parse(body)``; an answer the contract does not allow is the platform's error, with a code."""
    try:
        return parse(body)
    except RemoteProtocolError as exc:
        raise ApiError(ErrorCode.REMOTE_PROTOCOL, f"{what}: {exc}") from None


class RepPool:
    """The load test's synthetic reps: ``size`` agents named ``athos-load rep N`` (platformAgentId
    ``athos-load-rep-N``), each registered with ``POST /agents`` the first time it is needed (one
    already registered, by an earlier run, is reused) and handed out in turn, so a run of any length
    registers at most ``size`` agents."""

    def __init__(self, size: int = 20, prefix: str = "athos-load-rep-") -> None:
        self.size = max(1, size)
        self.prefix = prefix
        self.registered: dict[int, Agent] = {}
        self._turn = 0
        self._locks = [gevent.lock.Semaphore() for _ in range(self.size)]

    def next(self, api: AthosApi) -> str:
        """The next rep's platformAgentId, registered through ``api`` if this process has not yet."""
        index = self._turn % self.size
        self._turn += 1
        if index not in self.registered:
            with self._locks[index]:  # one registration per rep, however many users want it at once
                if index not in self.registered:
                    n = index + 1
                    request = RegisterAgentRequest("athos-load", f"rep {n}", f"{self.prefix}{n}")
                    self.registered[index] = api.register_agent(request)
        return f"{self.prefix}{index + 1}"


# -- scores ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Score:
    """A call reached its outcome: scored (fetch the score with ``GET /calls/:id``), or, with
    ``failed`` (the webhook's ``reason``), never to be scored."""

    call_id: str
    score: float | None  # the webhook and the list carry none: the call fetches it
    at: float  # time.monotonic() when the tool learned of it
    via: str  # "webhook" | "poll"
    failed: str | None = None


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

    ``counts`` tallies every delivery by outcome: ``accepted``, ``duplicate`` (a webhook id seen
    before, the retry of a delivery: answered 200, handed on once), and the rejections ``missing``,
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
        self._seen: OrderedDict[str, None] = OrderedDict()  # webhook ids, oldest first, bounded
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

    def handle(self, body: bytes, signature: str | None, now: float, webhook_id: str | None = None) -> tuple[int, str]:
        """Judge one delivery; returns the HTTP status and outcome at once (the score is fetched by
        the call that waits for it, never here: the answer must come within Athos' 10 s). Public
        so tests can drive it. Without ``X-Athos-Webhook-Id``, the call id (one event per call) de-duplicates."""
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
        key = webhook_id or f"call:{event.call_id}"
        if key in self._seen:
            self.counts["duplicate"] += 1
            return 200, "duplicate"
        self._seen[key] = None
        while len(self._seen) > self._max_seen:
            self._seen.popitem(last=False)
        self.counts["accepted"] += 1
        failed = None if event.success else event.reason
        if failed:
            self.counts["not_scored"] += 1
            logger.debug("call %s not scored: %s %s (delivery %s)", event.call_id, failed, event.reason_message,
                         event.request_id)  # fmt: skip
        self.board.deliver(Score(event.call_id, None, time.monotonic(), "webhook", failed))
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
        signature = environ.get(_wsgi_header(SIGNATURE_HEADER))
        webhook_id = environ.get(_wsgi_header(WEBHOOK_ID_HEADER))
        status, outcome = self.handle(body, signature, time.time(), webhook_id)
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


def _wsgi_header(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def _respond(start_response: Callable[..., Any], status: int, outcome: str, close: bool = False) -> list[bytes]:
    """A small JSON answer; ``close``: end the connection after it (what is left of the request is unread)."""
    body = f'{{"outcome":"{outcome}"}}'.encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [body]


class ScorePoller:
    """The backstop when the platform cannot reach a webhook on the load generator: polls
    ``GET /calls`` and delivers the calls the board waits for. One per process.

    The list filters on when a call *ended*, and a call shows only once it is scored, minutes
    later: a poller that reads forward from a watermark misses every score that lands inside a
    window it has read past. So each pass re-scans the last ``window`` seconds (at least the score
    timeout: an older call is no longer waited for), never reaching back before the run started
    (less ``skew``, the clocks' disagreement), follows ``nextCursor`` to the last page (at most
    ``max_pages``) and de-duplicates on the call id. It uses only the documented parameters. Any
    failure is counted (``errors``, and by code) and polling goes on: after ``interval``, doubled
    at each failure in a row up to ``max_interval``, and back to ``interval`` after a pass that works.
    """

    def __init__(
        self,
        api: AthosApi,
        board: ScoreBoard,
        *,
        interval: float = 1.0,
        max_interval: float = 30.0,
        window: float = 180.0,
        skew: float = 60.0,
        page_limit: int = MAX_PAGE,
        max_pages: int = 100,
        max_seen: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.board = board
        self.interval = interval
        self.max_interval = max(interval, max_interval)
        self.window = window
        self.page_limit = page_limit
        self.max_pages = max_pages
        self.counts: Counter[str] = Counter()  # polls, pages, delivered, duplicates, errors and errors by code
        self._clock = clock
        self._since = clock() - skew  # nothing that ended before the run is this run's
        self._seen: OrderedDict[str, None] = OrderedDict()  # call ids delivered, oldest first, bounded
        self._max_seen = max_seen
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
        """One pass over every page of the window; returns how many calls it delivered."""
        since = max(self._since, self._clock() - self.window)
        self.counts["polls"] += 1
        delivered, cursor = 0, None
        for _ in range(self.max_pages):
            calls, cursor = self.api.list_calls(since=since, cursor=cursor, limit=self.page_limit)
            self.counts["pages"] += 1
            now = time.monotonic()
            for call in calls:
                if call.id in self._seen:
                    self.counts["duplicates"] += 1  # read again in the overlap: delivered already
                    continue
                self._seen[call.id] = None
                while len(self._seen) > self._max_seen:
                    self._seen.popitem(last=False)
                self.board.deliver(Score(call.id, call.score, now, "poll"))
                delivered += 1
            if cursor is None:
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
