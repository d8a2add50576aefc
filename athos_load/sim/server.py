"""The simulator's aiohttp application: REST endpoints, the realtime WebSocket, start and stop.

A thin layer: every request is parsed with ``athos_load.wire`` and handed to the :class:`Platform`;
every answer is serialized by ``wire`` as well. After the upgrade a call's bytes go to its
:class:`~athos_load.sim.connection.Connection`; the per-frame path is :meth:`Server._sinks`: count,
VAD, and nothing else.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import ssl
import time
from collections.abc import Callable

from aiohttp import WSMessage, WSMsgType, web

from athos_load.wire import (
    CURSOR_NOW,
    HTTP_STATUS,
    OPCODE_BINARY,
    OPCODE_TEXT,
    PATH_CALLS,
    PATH_REALTIME,
    PATH_SESSIONS,
    CallStatus,
    CloseCode,
    Error,
    ErrorCode,
    Join,
    MintRequest,
    RemoteProtocolError,
    Resume,
    accept_key,
    authority,
    call_list_body,
    error_body,
    parse_client_message,
    server_frame,
)

from .calls import Call
from .config import SimConfig
from .connection import AudioSink, Connection, Link, TextSink
from .counters import Counters
from .platform import Platform

log = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
MAX_MESSAGE_BYTES = 1 << 20
SHUTDOWN_TIMEOUT = 3.0  # seconds handlers get to finish when the simulator stops
LISTEN_BACKLOG = 4096  # a load test opens hundreds of connections at once


def _json(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="application/json")


def _error(code: ErrorCode | str, message: str) -> web.Response:
    return _json(HTTP_STATUS.get(code, 400), error_body(code, message))  # type: ignore[call-overload]


class Server:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._close_tasks: set[asyncio.Task[object]] = set()  # close handshakes of aiohttp's reader
        self._connections: set[Connection] = set()
        self._api_key = platform.config.api_key.encode()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_post(PATH_SESSIONS, self.mint)
        app.router.add_get(PATH_CALLS, self.list_calls)
        app.router.add_get(PATH_CALLS + "/{call_id}", self.get_call)
        app.router.add_get(PATH_REALTIME, self.realtime)
        app.router.add_get("/healthz", self.healthz)
        app.on_shutdown.append(self._on_shutdown)
        return app

    # -- REST --------------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self._api_key)

    async def mint(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(ErrorCode.UNAUTHORIZED, "missing or wrong Bearer API key")
        try:
            body = MintRequest.parse(await request.read())
        except RemoteProtocolError as exc:
            return _error(ErrorCode.PROTOCOL_ERROR, f"bad mint request: {exc}")
        result = self.platform.mint(body)
        if isinstance(result, Error):
            return _error(result.code, result.message)
        return _json(201, result.serialize())

    async def get_call(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(ErrorCode.UNAUTHORIZED, "missing or wrong Bearer API key")
        call = self.platform.book.get(request.match_info["call_id"])
        if call is None:
            return _error(ErrorCode.UNKNOWN_CALL, "no such call (or it was evicted)")
        return _json(200, json.dumps(call.record().to_wire(), separators=(",", ":")))

    async def list_calls(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(ErrorCode.UNAUTHORIZED, "missing or wrong Bearer API key")
        query = request.query
        try:
            status = CallStatus(query["status"]) if query.get("status") else None
            # after=now: an empty page whose cursor is the end of the change log (a poller's start)
            now = query.get("after") == CURSOR_NOW
            after = 0 if now else int(query.get("after") or 0)
            limit = int(query.get("limit") or DEFAULT_LIST_LIMIT)
            if after < 0 or limit < 1:
                raise ValueError("after must be >= 0 and limit >= 1")
        except ValueError as exc:
            return _error(ErrorCode.PROTOCOL_ERROR, f"bad query: {exc}")
        if now:
            return _json(200, call_list_body([], str(self.platform.book.head)))
        records, cursor = self.platform.book.changes(after, status, min(limit, MAX_LIST_LIMIT))
        return _json(200, call_list_body(records, str(cursor)))

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, json.dumps(self.platform.health(), separators=(",", ":")))

    # -- realtime ----------------------------------------------------------------------------------

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        if self.platform.config.ws_reader == "aiohttp":
            return await self._realtime_aiohttp(request)
        ready = web.WebSocketResponse().can_prepare(request)  # aiohttp checks the upgrade request
        transport = request.transport
        if not ready.ok or transport is None:
            return _json(400, error_body(ErrorCode.PROTOCOL_ERROR, "not a WebSocket upgrade"))
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
