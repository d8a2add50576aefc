"""A call's connection to its client, and server-side WebSocket framing.

Outbound frames are written straight to the transport as pre-built bytes: a server frame is
unmasked, so a persona audio frame is the same bytes every time it is sent and is framed once per
audio format. That keeps the pacer's per-frame cost at one ``transport.write``. aiohttp's own writer
is used only for the close handshake (compression is off, so the two never disagree on framing).
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from athos_load.wire import AudioFormat

from .counters import Counters
from .voice import persona_pcm_frames

OP_TEXT = 0x1
OP_BINARY = 0x2
# A client that stops reading gets its persona audio dropped beyond this much unsent data
# (~8 s of 16 kHz audio): memory stays bounded and the lost frames are counted.
WRITE_BUFFER_LIMIT = 256 * 1024


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked WebSocket frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


@functools.lru_cache(maxsize=16)
def persona_wire_frames(audio: AudioFormat) -> tuple[bytes, ...]:
    """The persona's voice in ``audio``'s format, each frame ready to write to a socket."""
    return tuple(encode_frame(OP_BINARY, pcm) for pcm in persona_pcm_frames(audio))


class Link:
    """The live connection of one call: sends events and audio, closes or drops the socket.

    ``closer`` performs the WebSocket close handshake (a coroutine function taking the code);
    ``abort`` kills the TCP connection without a close frame (the client sees 1006).
    """

    __slots__ = ("_transport", "_closer", "_tasks", "_counters", "closing")

    def __init__(
        self,
        transport: asyncio.Transport,
        closer: Callable[[int], Coroutine[Any, Any, object]],
        tasks: set[asyncio.Task[object]],
        counters: Counters,
    ) -> None:
        self._transport = transport
        self._closer = closer
        self._tasks = tasks
        self._counters = counters
        self.closing: asyncio.Task[object] | None = None  # the close handshake, once started

    @property
    def open(self) -> bool:
        return not self._transport.is_closing()

    def send_text(self, text: str) -> None:
        if not self._transport.is_closing():
            self._transport.write(encode_frame(OP_TEXT, text.encode()))

    def send_audio(self, frame: bytes) -> None:
        """Write one pre-built binary frame (see :func:`persona_wire_frames`)."""
        transport = self._transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self._counters.frames_dropped += 1
            return
        transport.write(frame)
        self._counters.frames_out += 1

    def close(self, code: int) -> None:
        """Start the close handshake from synchronous code (a timer, the pacer); the first code wins."""
        if self.closing is not None:
            return
        task = asyncio.get_running_loop().create_task(self._closer(code))
        self.closing = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def abort(self) -> None:
        self._transport.abort()
