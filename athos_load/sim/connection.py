"""A call's WebSocket connection on the simulator's side, framed by the wire layer.

aiohttp answers the HTTP upgrade; from then on every byte of the connection goes to
:class:`Connection` through ``request.protocol.set_parser``, the hook aiohttp's own
``WebSocketResponse`` installs its reader with. Frames are parsed by ``athos_load.wire.frames``
(the same framer as the client's, in its server role) synchronously in ``data_received``: through
aiohttp's reader every inbound audio frame cost a queued message, a future and a wake-up of the
connection's task, most of a core at 50 000 frames/s. The framer's limits, ping/pong and the close
handshake are handled here too.

Outbound frames are written straight to the transport as pre-built bytes: a server frame is
unmasked, so a persona audio frame is the same bytes every time and is framed once per audio format.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Protocol

from athos_load.wire import (
    MAX_MESSAGE_BYTES,
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    AudioFormat,
    FrameError,
    FrameReader,
    close_payload,
    parse_close,
    server_frame,
)

from .counters import Counters
from .voice import persona_pcm_frames

# A client that stops reading gets its persona audio dropped beyond this much unsent data
# (~8 s of 16 kHz audio): memory stays bounded and the lost frames are counted.
WRITE_BUFFER_LIMIT = 256 * 1024
CLOSE_TIMEOUT = 2.0  # after our Close, how long the client has to answer before the socket is cut

AudioSink = Callable[[bytes, float], None]  # (PCM16 LE payload, arrival time)
TextSink = Callable[[bytes], None]


class Link(Protocol):
    """What the platform needs of a call's connection (a :class:`Connection`, or the reference
    reader's link in ``server.py``)."""

    @property
    def open(self) -> bool: ...

    def send_text(self, text: str) -> None: ...

    def send_audio(self, frame: bytes) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...

    def abort(self) -> None: ...


@functools.lru_cache(maxsize=16)
def persona_wire_frames(audio: AudioFormat) -> tuple[bytes, ...]:
    """The persona's voice in ``audio``'s format, each frame ready to write to a socket."""
    return tuple(server_frame(OPCODE_BINARY, pcm) for pcm in persona_pcm_frames(audio))


class Connection:
    """One client's WebSocket after the upgrade: aiohttp's payload-parser interface
    (``feed_data``/``feed_eof``) in, frames to the transport out.

    Messages are kept until :meth:`attach`: the first one (which must be a join or a resume) for
    :meth:`first_message`, later texts for the call; later audio before then is counted and dropped. :attr:`closed`
    resolves when the connection is gone, to the code of the client's Close frame, or None when
    the socket went without one.
    """

    __slots__ = (
        "_transport", "_counters", "_reader", "_audio", "_text", "_pending", "_first", "_waiter", "_close_sent",
        "_close_timer", "close_received", "closed",
    )  # fmt: skip

    def __init__(self, transport: asyncio.Transport, counters: Counters) -> None:
        self._transport = transport
        self._counters = counters
        self._reader = FrameReader(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, masked=True)
        self._audio: AudioSink | None = None
        self._text: TextSink | None = None
        self._pending: list[tuple[int, bytes]] = []  # messages before attach
        self._first = True  # the first message has not arrived yet
        self._waiter: asyncio.Future[tuple[int, bytes] | None] | None = None
        self._close_sent = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.close_received: int | None = None
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    # -- the call's side ---------------------------------------------------------------------------

    async def first_message(self, timeout: float) -> tuple[int, bytes] | None:
        """The first message (opcode, payload), or None if the connection ends or ``timeout`` passes."""
        if self._pending:
            return self._pending.pop(0)
        if self.closed.done():
            return None
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(self._waiter, timeout)
        except TimeoutError:
            return None
        finally:
            self._waiter = None

    def attach(self, audio: AudioSink, text: TextSink) -> None:
        """From now on, audio and text go to these callbacks (texts kept so far first)."""
        self._audio, self._text = audio, text
        pending, self._pending = self._pending, []
        for opcode, data in pending:
            if opcode == OPCODE_TEXT:
                text(data)

    @property
    def open(self) -> bool:
        return not self._close_sent and not self._transport.is_closing()

    def send_text(self, text: str) -> None:
        if self.open:
            self._transport.write(server_frame(OPCODE_TEXT, text.encode()))

    def send_audio(self, frame: bytes) -> None:
        """Write one pre-built binary frame (see :func:`persona_wire_frames`)."""
        transport = self._transport
        if self._close_sent or transport.is_closing():
            return
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self._counters.frames_dropped += 1
            return
        transport.write(frame)
        self._counters.frames_out += 1

    def close(self, code: int, reason: str = "") -> None:
        """Start the close handshake; the first code wins. The socket is cut if no answer comes."""
        if self._close_sent or self._transport.is_closing():
            return
        self._close_sent = True
        self._transport.write(server_frame(OPCODE_CLOSE, close_payload(code, reason)))
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._transport.abort)

    def abort(self) -> None:
        """Kill the TCP connection without a Close frame (the client sees 1006)."""
        self._transport.abort()

    # -- aiohttp's payload-parser interface --------------------------------------------------------

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        try:
            frames = self._reader.feed(data)
        except FrameError as exc:  # the reader keeps refusing from now on, buffering nothing
            self.close(exc.close_code, str(exc))
            self._transport.pause_reading()
            return False, b""
        audio = self._audio
        now = time.monotonic()
        for opcode, payload in frames:
            if opcode == OPCODE_BINARY:
                self._counters.frames_in += 1
                if audio is not None:
                    audio(payload, now)
                elif self._first:
                    self._on_message(opcode, payload)
            elif opcode == OPCODE_TEXT:
                if self._text is not None:
                    self._text(payload)
                else:
                    self._on_message(opcode, payload)
            elif opcode == OPCODE_CLOSE:
                self._on_close(payload)
            elif opcode == OPCODE_PING:
                if self.open:
                    self._transport.write(server_frame(OPCODE_PONG, payload))
        return False, b""

    def feed_eof(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if not self.closed.done():
            self.closed.set_result(self.close_received)

    def _on_message(self, opcode: int, payload: bytes) -> None:
        """A message before attach: the first goes to whoever waits for it, the rest wait for the call."""
        self._first = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((opcode, payload))
        else:
            self._pending.append((opcode, payload))

    def _on_close(self, payload: bytes) -> None:
        """The client's Close: echo its code (RFC 6455 §5.5.1) unless ours went first, then hang up."""
        try:
            code = self.close_received = parse_close(payload)
            echo = b"" if code == 1005 else close_payload(code)
        except FrameError as exc:
            self.close_received, echo = exc.close_code, close_payload(exc.close_code)
        if not self._close_sent:
            self._close_sent = True
            self._transport.write(server_frame(OPCODE_CLOSE, echo))
        self._transport.close()
