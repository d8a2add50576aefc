"""The simulator's aiohttp application: REST endpoints, the realtime WebSocket, start and stop.

A thin layer: every request is parsed with ``athos_load.protocol`` and handed to the
:class:`Platform`; every answer is serialized by ``protocol`` as well. The per-frame path of a call
is :meth:`Server._serve`: receive, count, VAD, and nothing else.
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

import numpy as np
from aiohttp import WSMsgType, web

from athos_load.wire import (
    CURSOR_NOW,
    HTTP_STATUS,
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
    call_list_body,
    error_body,
    parse_client_message,
)

from .calls import Call
from .config import SimConfig
from .link import Link
from .platform import Platform
from .tap import AudioSink, TextSink, install

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
        self._close_tasks: set[asyncio.Task[object]] = set()
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

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=MAX_MESSAGE_BYTES)
        protocol = request.protocol
        tail = getattr(protocol, "_message_tail", None)  # see tap.install
        await ws.prepare(request)
        tap = install(protocol, tail) if self.platform.config.ws_reader == "tap" else None
        transport = request.transport
        if transport is None:
            return ws
        counters = self.platform.counters
        counters.connections += 1
        link = Link(transport, lambda code: ws.close(code=code), self._close_tasks, counters)
        try:
            call = await self._open_call(ws, link)
            if call is not None:
                if tap is not None:
                    tap.attach(*self._sinks(call, link))
                await self._serve(ws, link, call)
            if link.closing is not None:
                await link.closing
        finally:
            counters.connections -= 1
        return ws

    async def _open_call(self, ws: web.WebSocketResponse, link: Link) -> Call | None:
        """The first message joins or resumes a call; anything else is refused with 1008."""
        try:
            msg = await ws.receive(timeout=self.platform.config.join_timeout)
        except TimeoutError:
            await self._refuse(ws, Error(ErrorCode.PROTOCOL_ERROR, "no join or resume in time"))
            return None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        if msg.type is not WSMsgType.TEXT:
            await self._refuse(ws, Error(ErrorCode.PROTOCOL_ERROR, "the first message must be join or resume"))
            return None
        try:
            command = parse_client_message(msg.data)
        except RemoteProtocolError as exc:
            await self._refuse(ws, Error(ErrorCode.PROTOCOL_ERROR, f"bad message: {exc}"))
            return None
        if isinstance(command, Join):
            result = await self.platform.join(command, link)
        elif isinstance(command, Resume):
            result = self.platform.resume(command, link)
        else:
            result = Error(ErrorCode.PROTOCOL_ERROR, "hangup before join")
        if isinstance(result, Error):
            await self._refuse(ws, result)
            return None
        return result

    async def _refuse(self, ws: web.WebSocketResponse, error: Error) -> None:
        if error.code == ErrorCode.PROTOCOL_ERROR:  # the platform counted and logged the other refusals
            self.platform.counters.refused += 1
            self.platform.truth.record("error", None, code=str(error.code))
        try:
            await ws.send_str(error.serialize())
            await ws.close(code=CloseCode.POLICY, message=str(error.code).encode()[:120])
        except ConnectionError:
            pass  # the client is already gone; nothing left to tell it

    def _sinks(self, call: Call, link: Link) -> tuple[AudioSink, TextSink]:
        """The per-frame hot path with a tap: one counter, one VAD step, called from data_received."""
        platform = self.platform
        counters = platform.counters
        feed = call.vad.feed
        on_vad = platform.on_vad

        def audio(samples: np.ndarray, now: float) -> None:
            counters.frames_in += 1
            if call.link is link:
                event = feed(samples, now)
                if event:
                    on_vad(call, event, now)

        def text(data: bytes) -> None:
            if call.link is link:
                platform.on_text(call, data)

        return audio, text

    async def _serve(self, ws: web.WebSocketResponse, link: Link, call: Call) -> None:
        """The call's reader loop. With a tap it only sees what the tap forwards (control frames,
        fragmented messages, frames queued before the call started); without one, every frame."""
        platform = self.platform
        counters = platform.counters
        receive = ws.receive
        feed = call.vad.feed_pcm
        on_vad = platform.on_vad
        monotonic = time.monotonic
        binary, text = WSMsgType.BINARY, WSMsgType.TEXT
        while True:
            msg = await receive()
            kind = msg.type
            if kind is binary:
                counters.frames_in += 1
                if call.link is link:
                    now = monotonic()
                    event = feed(msg.data, now)
                    if event:
                        on_vad(call, event, now)
            elif kind is text:
                if call.link is link:
                    platform.on_text(call, msg.data)
            else:
                break
        if call.link is link:  # not ended, dropped or taken over by us: the client went away
            platform.connection_lost(call, clean=kind is WSMsgType.CLOSE)

    async def _on_shutdown(self, app: web.Application) -> None:
        """Close every call's socket with 1001 (going away: a client may resume elsewhere)."""
        now = time.monotonic()
        for call in list(self.platform.live):
            link = call.link
            self.platform.detach(call, now, cause="shutdown")
            if link is not None:
                link.close(CloseCode.GOING_AWAY)
        if self._close_tasks:
            await asyncio.wait(list(self._close_tasks), timeout=SHUTDOWN_TIMEOUT)


def _url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


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
