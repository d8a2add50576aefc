"""The simulator's aiohttp application: REST endpoints, the realtime WebSocket, start and stop.

A thin layer: every request is parsed with ``athos_load.wire`` and handed to the :class:`Platform`;
every answer is serialized by ``wire`` as well. After the upgrade a call's bytes go to its
:class:`~athos_load.sim.connection.Connection`; the per-frame path is :meth:`Server._sinks`: count,
VAD, and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import signal
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import WSMessage, WSMsgType, web

from athos_load.wire import (
    HTTP_STATUS,
    OPCODE_BINARY,
    OPCODE_TEXT,
    PATH_AGENTS,
    PATH_CALLS,
    PATH_REALTIME,
    PATH_REDEEM,
    PATH_SESSION,
    REQUEST_ID_HEADER,
    REQUEST_ID_PREFIX,
    RETRY_AFTER_HEADER,
    SOURCE_ROLEPLAY,
    ApiErrorBody,
    CallStatus,
    CloseCode,
    Error,
    ErrorCode,
    Join,
    MintRequest,
    RedeemRequest,
    RegisterAgentRequest,
    RemoteProtocolError,
    Resume,
    accept_key,
    authority,
    call_list_body,
    error_body,
    parse_client_message,
    server_frame,
)
from athos_load.wire.fields import from_iso

from .calls import Call
from .config import SimConfig
from .connection import AudioSink, Connection, Link, TextSink
from .counters import Counters
from .platform import Platform

log = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT = 50  # GET /calls page size: the documented default and maximum
MAX_LIST_LIMIT = 100
MAX_MESSAGE_BYTES = 1 << 20
SHUTDOWN_TIMEOUT = 3.0  # seconds handlers get to finish when the simulator stops
LISTEN_BACKLOG = 4096  # a load test opens hundreds of connections at once


def _json(status: int, body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def _error(request: web.Request, error: ApiErrorBody | ErrorCode, message: str = "") -> web.Response:
    """The error envelope, with the request's id; a 429 says when to retry."""
    if isinstance(error, ErrorCode | str):
        error = ApiErrorBody(error, message)
    details = dict(error.details)
    headers = {}
    retry = details.pop("retryAfter", None)
    if retry is not None:
        headers[RETRY_AFTER_HEADER] = str(retry)
    body = error_body(error.code, error.message, request[REQUEST_ID_KEY], details)
    return _json(HTTP_STATUS.get(error.code, 400), body, headers)  # type: ignore[call-overload]


REQUEST_ID_KEY = web.RequestKey("request_id", str)
# GET /calls: the documented query parameters; any other (an extension such as after=now) is refused
LIST_PARAMS = frozenset(
    {"from", "to", "source", "agentId", "agencyId", "platformAgentId", "platformAgencyId", "limit", "cursor"}
)


@web.middleware
async def _request_id(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every answer carries ``X-Athos-Request-Id`` (and every error body its ``requestId``)."""
    request_id = request[REQUEST_ID_KEY] = REQUEST_ID_PREFIX + str(uuid.uuid4())
    response = await handler(request)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


class Server:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._close_tasks: set[asyncio.Task[object]] = set()  # close handshakes of aiohttp's reader
        self._connections: set[Connection] = set()
        self._api_key = platform.config.api_key.encode()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES, middlewares=[_request_id])
        app.router.add_post(PATH_AGENTS, self.register)
        app.router.add_post(PATH_SESSION, self.mint)
        app.router.add_post(PATH_REDEEM, self.redeem)
        app.router.add_get(PATH_CALLS, self.list_calls)
        app.router.add_get(PATH_CALLS + "/{call_id}", self.get_call)
        app.router.add_get(PATH_REALTIME, self.realtime)
        app.router.add_get("/healthz", self.healthz)
        app.on_shutdown.append(self._on_shutdown)
        return app

    # -- REST --------------------------------------------------------------------------------------

    def _bearer(self, request: web.Request) -> str:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return key.strip() if scheme.lower() == "bearer" else ""

    def _authorized(self, request: web.Request) -> bool:
        return hmac.compare_digest(self._bearer(request).encode(), self._api_key)

    async def register(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(request, ErrorCode.INVALID_API_KEY, "missing or invalid API key")
        try:
            body = RegisterAgentRequest.parse(await request.read())
        except RemoteProtocolError as exc:
            return _error(request, ErrorCode.INVALID_REQUEST, f"bad agent: {exc}")
        result = self.platform.register(body)
        if isinstance(result, ApiErrorBody):
            return _error(request, result)
        agent, agency_name = result
        return _json(201, agent.serialize(agency_name, body.platform_agency_id))

    async def mint(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(request, ErrorCode.INVALID_API_KEY, "missing or invalid API key")
        try:
            body = MintRequest.parse(await request.read())
        except RemoteProtocolError as exc:
            return _error(request, ErrorCode.INVALID_REQUEST, f"bad session request: {exc}")
        result = self.platform.mint(body)
        if isinstance(result, ApiErrorBody):
            return _error(request, result)
        return _json(200, result.serialize())

    async def redeem(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body: RedeemRequest | None
        try:
            body = RedeemRequest.parse(raw)
        except RemoteProtocolError:
            body = None  # refused after the token is checked, and without spending it
        scheme = "wss" if request.secure else "ws"
        result = self.platform.redeem(self._bearer(request), body, f"{scheme}://{request.host}{PATH_REALTIME}")
        if isinstance(result, ApiErrorBody):
            return _error(request, result)
        return _json(200, result.serialize())

    async def get_call(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(request, ErrorCode.INVALID_API_KEY, "missing or invalid API key")
        call = self.platform.book.get(request.match_info["call_id"])
        if call is None or call.status is not CallStatus.SCORED:  # only a scored call is readable
            return _error(request, ErrorCode.CALL_NOT_FOUND, "Call not found")
        return _json(200, json.dumps(call.record().to_wire(), separators=(",", ":")))

    async def list_calls(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(request, ErrorCode.INVALID_API_KEY, "missing or invalid API key")
        query = request.query
        try:
            unknown = sorted(set(query) - LIST_PARAMS)
            if unknown:
                raise ValueError(f"unknown parameter {unknown[0][:40]!r}")
            if query.get("source") != SOURCE_ROLEPLAY:
                raise ValueError("source must be roleplay")
            since = from_iso(query.get("from", ""))
            until = from_iso(query["to"]) if "to" in query else None
            limit = int(query.get("limit", DEFAULT_LIST_LIMIT))
            if not 1 <= limit <= MAX_LIST_LIMIT:
                raise ValueError(f"limit must be 1-{MAX_LIST_LIMIT}")
            after = _cursor_key(query["cursor"]) if "cursor" in query else None
        except (ValueError, RemoteProtocolError) as exc:
            return _error(request, ErrorCode.INVALID_REQUEST, f"bad query: {exc}")
        agent = _agent_filter(query)
        records, last = self.platform.book.page(since, until, after, limit, agent)
        return _json(200, call_list_body(records, None if last is None else _cursor(last)))

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, json.dumps(self.platform.health(), separators=(",", ":")))

    # -- realtime ----------------------------------------------------------------------------------

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        if self.platform.config.ws_reader == "aiohttp":
            return await self._realtime_aiohttp(request)
        ready = web.WebSocketResponse().can_prepare(request)  # aiohttp checks the upgrade request
        transport = request.transport
        if not ready.ok or transport is None:
            return _error(request, ErrorCode.PROTOCOL_ERROR, "not a WebSocket upgrade")
        response = web.StreamResponse(
            status=101,
            headers={
                "Upgrade": "websocket",
                "Connection": "upgrade",
                "Sec-WebSocket-Accept": accept_key(request.headers["Sec-WebSocket-Key"]),
            },
        )
        await response.prepare(request)
        conn = Connection(transport, self.platform.counters)  # type: ignore[arg-type]
        request.protocol.set_parser(conn)  # type: ignore[arg-type]  # what WebSocketResponse does
        request.protocol.keep_alive(False)
        counters = self.platform.counters
        counters.connections += 1
        counters.fast_reader_connections += 1
        self._connections.add(conn)
        try:
            first = await conn.first_message(self.platform.config.join_timeout)
            call = await self._open_call(first, conn)
            if call is not None:
                conn.attach(*self._sinks(call, conn))
            clean = await conn.closed
            if call is not None and call.link is conn:  # not ended, dropped or taken over by us
                self.platform.connection_lost(call, clean=clean is not None)
        finally:
            counters.connections -= 1
            self._connections.discard(conn)
        return response

    async def _open_call(self, first: tuple[int, bytes] | None, link: Link) -> Call | None:
        """The first message joins or resumes a call; anything else is refused with 1008."""
        if first is None:
            if link.open:
                self._refuse(link, Error(ErrorCode.PROTOCOL_ERROR, "no join or resume in time"))
            return None
        if first[0] != OPCODE_TEXT:
            self._refuse(link, Error(ErrorCode.PROTOCOL_ERROR, "the first message must be join or resume"))
            return None
        try:
            command = parse_client_message(first[1])
        except RemoteProtocolError as exc:
            self._refuse(link, Error(ErrorCode.PROTOCOL_ERROR, f"bad message: {exc}"))
            return None
        if isinstance(command, Join):
            result = await self.platform.join(command, link)
        elif isinstance(command, Resume):
            result = self.platform.resume(command, link)
        else:
            result = Error(ErrorCode.PROTOCOL_ERROR, "hangup before join")
        if isinstance(result, Error):
            self._refuse(link, result)
            return None
        return result

    def _refuse(self, link: Link, error: Error) -> None:
        if error.code == ErrorCode.PROTOCOL_ERROR:  # the platform counted and logged the other refusals
            self.platform.counters.refused += 1
            self.platform.truth.record("error", None, code=str(error.code))
        link.send_text(error.serialize())
        link.close(CloseCode.POLICY, str(error.code))

    def _sinks(self, call: Call, link: Link) -> tuple[AudioSink, TextSink]:
        """The per-frame hot path: one counter, one VAD step, called from data_received."""
        platform = self.platform
        feed = call.vad.feed_pcm
        on_vad = platform.on_vad

        def audio(pcm: bytes, now: float) -> None:
            if call.link is link:
                event = feed(pcm, now)
                if event:
                    on_vad(call, event, now)

        def text(data: bytes) -> None:
            if call.link is link:
                platform.on_text(call, data)

        return audio, text

    # -- the reference reader: aiohttp's own WebSocketResponse (--ws-reader aiohttp) ----------------

    async def _realtime_aiohttp(self, request: web.Request) -> web.WebSocketResponse:
        """Every frame through aiohttp's reader: slower, and an independent check of the framer's path."""
        ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        counters = self.platform.counters
        counters.connections += 1
        link = AiohttpLink(ws, transport, self._close_tasks, counters)
        try:
            msg = await _receive(ws, self.platform.config.join_timeout)
            first = None
            if msg is not None:
                first = (OPCODE_TEXT, msg.data.encode()) if msg.type is WSMsgType.TEXT else (OPCODE_BINARY, b"")
            call = await self._open_call(first, link)
            if call is not None:
                audio, text = self._sinks(call, link)
                kind = WSMsgType.CLOSED
                while True:
                    msg = await ws.receive()
                    kind = msg.type
                    if kind is WSMsgType.BINARY:
                        counters.frames_in += 1
                        audio(msg.data, time.monotonic())
                    elif kind is WSMsgType.TEXT:
                        text(msg.data.encode())
                    else:
                        break
                if call.link is link:
                    self.platform.connection_lost(call, clean=kind is WSMsgType.CLOSE)
            if link.closing is not None:
                await link.closing
        finally:
            counters.connections -= 1
        return ws

    async def _on_shutdown(self, app: web.Application) -> None:
        """Close every call's socket with 1001 (going away: a client may resume elsewhere)."""
        now = time.monotonic()
        for call in list(self.platform.live):
            link = call.link
            self.platform.detach(call, now, cause="shutdown")
            if link is not None:
                link.close(CloseCode.GOING_AWAY)
        waits = [*self._close_tasks, *(conn.closed for conn in self._connections)]
        if waits:
            await asyncio.wait(waits, timeout=SHUTDOWN_TIMEOUT)


async def _receive(ws: web.WebSocketResponse, timeout: float) -> WSMessage | None:
    try:
        msg = await ws.receive(timeout=timeout)
    except TimeoutError:
        return None
    return None if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR) else msg


class AiohttpLink:
    """The platform's :class:`Link` over aiohttp's WebSocketResponse (the reference reader)."""

    __slots__ = ("_ws", "_transport", "_tasks", "_counters", "closing")

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport, tasks: set[asyncio.Task[object]],
        counters: Counters,
    ) -> None:  # fmt: skip
        self._ws, self._transport, self._tasks, self._counters = ws, transport, tasks, counters
        self.closing: asyncio.Task[object] | None = None

    @property
    def open(self) -> bool:
        return self.closing is None and not self._transport.is_closing()

    def send_text(self, text: str) -> None:
        if self.open:
            self._transport.write(server_frame(OPCODE_TEXT, text.encode()))  # type: ignore[attr-defined]

    def send_audio(self, frame: bytes) -> None:
        if self.open:
            self._transport.write(frame)  # type: ignore[attr-defined]
            self._counters.frames_out += 1

    def close(self, code: int, reason: str = "") -> None:
        if self.closing is None:
            self.closing = task = asyncio.get_running_loop().create_task(
                self._ws.close(code=code, message=reason.encode()[:120])
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def abort(self) -> None:
        self._transport.abort()  # type: ignore[attr-defined]


def _cursor(key: tuple[float, str]) -> str:
    """An opaque cursor: the last row's (endedAt, id), which the next page starts after."""
    return base64.urlsafe_b64encode(json.dumps([key[0], key[1]]).encode()).decode()


def _cursor_key(cursor: str) -> tuple[float, str]:
    try:
        ended, call_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(ended), str(call_id)
    except (ValueError, TypeError, binascii.Error):
        raise ValueError("bad cursor") from None


def _agent_filter(query: Mapping[str, str]) -> Callable[[Call], bool] | None:
    """The documented rep and agency filters (Athos and platform ids), combined by AND."""
    wanted = {k: query[k] for k in ("agentId", "agencyId", "platformAgentId", "platformAgencyId") if k in query}
    if not wanted:
        return None

    def match(call: Call) -> bool:
        agent = call.agent
        have = {
            "agentId": agent.id if agent else None,
            "agencyId": agent.agency_id if agent else None,
            "platformAgentId": agent.platform_agent_id if agent else None,
            "platformAgencyId": None,
        }
        return all(have[k] == v for k, v in wanted.items())

    return match


def _url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://{authority(host, port)}"


def _ssl_context(config: SimConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def serve(config: SimConfig, on_listening: Callable[[str], None] | None = None) -> None:
    """Run the simulator until SIGTERM or SIGINT, then stop gracefully (truth log flushed)."""
    platform = Platform(config)
    await platform.start()
    runner = web.AppRunner(
        Server(platform).app(), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        tls = _ssl_context(config)
        site = web.TCPSite(
            runner, config.host, config.port, backlog=LISTEN_BACKLOG, reuse_address=True, ssl_context=tls
        )
        await site.start()
        port = runner.addresses[0][1]
        url = _url(config.host, port, "https" if tls else "http")
        if on_listening is not None:
            on_listening(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
        await platform.stop()
