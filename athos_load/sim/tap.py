"""A fast path for a call's inbound frames, in front of aiohttp's WebSocket reader.

Through aiohttp, every inbound audio frame costs a queued message, a future and a wake-up of the
connection's task: at 50 000 frames/s that is most of a core. :class:`FrameTap` is fed the raw
bytes first (as aiohttp's payload parser), splits them into frames itself, and hands the call's
complete, masked data frames (audio, text) straight to callbacks, synchronously in
``data_received``. Every other frame (control, fragmented, oversized, anything before the call is
attached) is forwarded whole, untouched, to aiohttp's reader, which therefore always sees a stream
cut at frame boundaries and keeps doing the close handshake, ping/pong and error handling.

It relies on two undocumented aiohttp attributes (``RequestHandler._payload_parser`` and
``_message_tail``); :func:`install` returns None when they are not as expected, and the server
falls back to reading every frame through aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
MAX_FAST_FRAME = 1 << 16  # larger frames are left to aiohttp (its max message size applies)
_U4 = np.dtype("<u4")
_I2 = np.dtype("<i2")

AudioSink = Callable[[np.ndarray, float], None]  # (int16 samples, arrival time)
TextSink = Callable[[bytes], None]


class FrameTap:
    """aiohttp's payload-parser interface (``feed_data``/``feed_eof``) around its own reader."""

    __slots__ = ("_inner", "_pending", "_audio", "_text", "_fragmented", "_passthrough")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._pending = b""  # an incomplete frame carried to the next chunk
        self._audio: AudioSink | None = None
        self._text: TextSink | None = None
        self._fragmented = False  # inside a fragmented message: its frames all go to aiohttp
        self._passthrough = False  # gave up framing (oversized frame): everything goes to aiohttp

    def attach(self, audio: AudioSink, text: TextSink) -> None:
        """From now on, data frames go to these callbacks."""
        self._audio = audio
        self._text = text

    # -- aiohttp's parser interface ----------------------------------------------------------------

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._passthrough:
            return self._inner.feed_data(data)
        if self._pending:
            data = self._pending + data
            self._pending = b""
        audio = self._audio
        now = time.monotonic()
        size = len(data)
        pos = 0
        fwd = 0  # start of the run of frames still to forward to aiohttp
        result = (False, b"")
        while size - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4
            end = pos + head + length
            if length > MAX_FAST_FRAME:
                self._passthrough = True  # let aiohttp read (and refuse) it; never resynchronise
                tail = self._inner.feed_data(data[fwd:])
                return result if result[0] else tail
            if end > size:
                break
            op = b0 & 0x0F
            if audio is not None and b0 & 0x80 and b1 & 0x80 and not self._fragmented and 0 < op < 3:
                if fwd < pos:
                    result = self._inner.feed_data(data[fwd:pos])
                fwd = end
                start = pos + head
                mask = data[start - 4 : start]
                if op == OP_BINARY:
                    audio(_unmask_pcm(data, start, length, mask), now)
                else:
                    self._text(_unmask_bytes(data, start, length, mask))  # type: ignore[misc]
            elif op < 3:  # data frames we do not take: track fragmentation, forward
                self._fragmented = not (b0 & 0x80)
            pos = end
        if fwd < pos:
            result = self._inner.feed_data(data[fwd:pos])
        if pos < size:
            self._pending = data[pos:]
        return result


def install(protocol: Any, tail_before_prepare: object) -> FrameTap | None:
    """Put a tap in front of the aiohttp reader that ``WebSocketResponse.prepare`` just installed.

    ``tail_before_prepare`` is ``protocol._message_tail`` read before ``prepare``: if the client
    sent frames before the handshake completed, aiohttp's reader may hold part of a frame, and a
    tap starting mid-frame would misread the stream, so there is no tap then.
    """
    inner = getattr(protocol, "_payload_parser", None)
    if tail_before_prepare != b"" or inner is None or not hasattr(inner, "feed_data"):
        return None
    tap = FrameTap(inner)
    protocol._payload_parser = tap
    return tap


def _unmask_pcm(data: bytes, start: int, length: int, mask: bytes) -> np.ndarray:
    """The frame's payload as int16 samples, unmasked 4 bytes at a time."""
    words = length >> 2
    if words << 2 == length:
        # one view over the masking key and the payload: the key is word 0, XORed onto the others
        view = np.frombuffer(data, _U4, words + 1, start - 4)
        return (view[1:] ^ view[0]).view(_I2)
    raw = np.frombuffer(data, np.uint8, length, start) ^ np.resize(np.frombuffer(mask, np.uint8), length)
    return raw[: length & ~1].view(_I2)


def _unmask_bytes(data: bytes, start: int, length: int, mask: bytes) -> bytes:
    raw = np.frombuffer(data, np.uint8, length, start) ^ np.resize(np.frombuffer(mask, np.uint8), length)
    return raw.tobytes()
