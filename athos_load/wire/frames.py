"""WebSocket framing (RFC 6455) for both sides: frames out, frames in with size limits, the close
and opening handshakes' values. Bytes in, bytes out; no socket.

Sending a frame through websocket-client costs an ``ABNF`` object, a fresh mask from
``os.urandom``, a Python-level XOR and a header ``struct.pack`` — per frame, per session, 50 times
a second. A clip's audio never changes, so its frames are framed and masked once, in one numpy
pass, each with its own random mask key (RFC 6455 §5.3 asks for an unpredictable key per frame),
and every session that plays the clip sends the same ready-made bytes with one ``sendall``. A
server's frames are unmasked, so the simulator frames its persona voice once per audio format.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence

import numpy as np

from .errors import FrameError

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA
OPCODES = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})  # RFC 6455 §5.2; the rest are reserved
FIN = 0x80
RSV = 0x70
MASKED = 0x80
# What a peer may send, at most. Athos sends JSON events of a few hundred bytes and audio frames of
# ~10 KB (48 kHz, 100 ms); anything near these limits is a broken or hostile peer, and checking the
# header before buffering is what keeps a claimed 2^62-byte frame from taking the process's memory.
MAX_FRAME_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 1 << 20
MAX_CONTROL_BYTES = 125  # RFC 6455 §5.5
FINAL_DATA = (FIN | OPCODE_TEXT, FIN | OPCODE_BINARY)  # first header byte of an unfragmented message

# RFC 6455 §1.3: the server proves it read the client's key by hashing it with this GUID.
HANDSHAKE_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def header(length: int, opcode: int = OPCODE_BINARY, masked: bool = True) -> bytes:
    """FIN + ``opcode``, the mask bit and the payload length (7-bit, 16-bit or 64-bit form)."""
    mask = MASKED if masked else 0
    if length < 126:
        return bytes((FIN | opcode, mask | length))
    if length < 1 << 16:
        return bytes((FIN | opcode, mask | 126)) + length.to_bytes(2, "big")
    return bytes((FIN | opcode, mask | 127)) + length.to_bytes(8, "big")


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame, as a server sends it."""
    return header(len(payload), opcode, masked=False) + payload


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame masked with a fresh random key, as a client sends it."""
    key = os.urandom(4)
    return header(len(payload), opcode) + key + _unmask(payload, 0, len(payload), key)


def close_payload(code: int, reason: str = "") -> bytes:
    """A Close frame's body: the code, then at most 123 bytes of UTF-8 reason (RFC 6455 §5.5.1)."""
    return code.to_bytes(2, "big") + reason.encode()[:123]


def parse_close(payload: bytes) -> int:
    """The code of a received Close frame, 1005 when it has none (§7.1.5). A body that breaks
    RFC 6455 raises :class:`FrameError`: one byte (§5.5.1), or a code no endpoint may send (§7.4.1),
    above all 1006, which must never pass for a transient drop."""
    if not payload:
        return 1005
    code = int.from_bytes(payload[:2], "big")
    if len(payload) >= 2 and (1000 <= code <= 1014 and code not in (1004, 1005, 1006) or 3000 <= code <= 4999):
        return code
    raise FrameError(f"a malformed Close frame: {payload[:2]!r}")


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + HANDSHAKE_GUID).digest()).decode()


class MaskedFrames(tuple[bytes, ...]):
    """Complete masked binary frames, ready to send as they are: what :func:`mask_frames` makes
    of a clip, once, for every session that plays it (an audio ``Clip`` keeps its own)."""

    __slots__ = ()


def mask_frames(payloads: Sequence[bytes]) -> MaskedFrames:
    """Each payload as a complete masked binary frame; payloads of one length go in one numpy pass."""
    if not payloads:
        return MaskedFrames()
    length = len(payloads[0])
    if any(len(p) != length for p in payloads):
        return MaskedFrames(mask_frames([p])[0] for p in payloads)
    count = len(payloads)
    data = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(count, length)
    keys = np.frombuffer(os.urandom(4 * count), dtype=np.uint8).reshape(count, 4)
    masked = data ^ np.tile(keys, (1, -(-length // 4)))[:, :length]
    head = np.frombuffer(header(length), dtype=np.uint8)
    frames = np.hstack([np.broadcast_to(head, (count, head.size)), keys, masked])
    return MaskedFrames(row.tobytes() for row in frames)


def masked(frames: Sequence[bytes]) -> MaskedFrames:
    """``frames`` as masked binary frames: as they are if already masked, else masked now."""
    return frames if isinstance(frames, MaskedFrames) else mask_frames(frames)


class FrameReader:
    """Frames parsed out of whatever one ``recv`` returned: a client's reader takes unmasked frames,
    a server's (``masked=True``) masked ones, which it unmasks.

    websocket-client reads a frame with two or three ``recv`` calls and builds an object per frame;
    with persona audio arriving 50 times a second per session that is most of a generator's CPU.
    This reads everything the socket holds in one call and walks the frames in place. Returns
    ``(opcode, payload)`` for each complete message; binary payloads are only counted by callers.
    A frame or message past the limits, or one that breaks the RFC's framing rules, raises
    :class:`FrameError` as soon as its header is read.
    """

    __slots__ = ("_buffer", "_opcode", "_parts", "_collected", "_error", "max_frame", "max_message", "masked")

    def __init__(
        self, max_frame: int = MAX_FRAME_BYTES, max_message: int = MAX_MESSAGE_BYTES, *, masked: bool = False
    ) -> None:
        self.masked = masked  # what this side must receive: a server reads masked frames only
        self._buffer = bytearray()
        self._error: FrameError | None = None  # once the stream is broken, nothing more is read
        self._opcode = 0  # of a fragmented message being collected, else 0
        self._parts: list[bytes] = []
        self._collected = 0
        self.max_frame = max_frame
        self.max_message = max_message

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except FrameError as exc:
            self._error = exc
            self._buffer.clear()
            self._parts.clear()
            raise

    def _feed(self, data: bytes) -> list[tuple[int, bytes]]:
        # Parse straight from ``data`` when nothing is left over from the last call (the usual case:
        # a whole frame per read); only a remainder is copied into the buffer.
        buffer = self._buffer
        if buffer:
            buffer += data
            data = buffer
        out: list[tuple[int, bytes]] = []
        pos, size = 0, len(data)
        while size - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
            if bool(b1 & MASKED) is not self.masked:
                raise FrameError(
                    "a client must mask its frames (RFC 6455 §5.1)"
                    if self.masked
                    else "a server must not mask its frames (RFC 6455 §5.1)"
                )
            if not (b0 in FINAL_DATA and length <= self.max_frame and not self._opcode):
                self._check_header(b0, length)  # the common case, a whole text or binary frame, is fine
            if self.masked:
                start += 4
            end = start + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if self.masked:
                payload = _unmask(data, start, length, data[start - 4 : start])
            else:
                payload = bytes(data[start:end])
            pos = end
            if opcode >= 0x8:  # control frames may arrive between fragments
                out.append((opcode, payload))
            elif not b0 & FIN:  # a fragment: collect until the final one
                self._opcode = opcode or self._opcode
                self._collect(payload)
            elif opcode == OPCODE_CONTINUATION:  # the final continuation
                self._collect(payload)
                out.append((self._opcode, b"".join(self._parts)))
                self._opcode, self._parts, self._collected = 0, [], 0
            else:
                out.append((opcode, payload))
        if data is buffer:
            del buffer[:pos]
        elif pos < size:
            buffer += data[pos:]
        return out

    def _check_header(self, b0: int, length: int) -> None:
        opcode = b0 & 0x0F
        if b0 & RSV:
            raise FrameError("reserved bits set with no extension agreed (RFC 6455 §5.2)")
        if opcode not in OPCODES:
            raise FrameError(f"reserved opcode {opcode:#x} (RFC 6455 §5.2)")
        if opcode >= 0x8:
            if length > MAX_CONTROL_BYTES or not b0 & FIN:
                raise FrameError("a control frame must be final and at most 125 bytes (RFC 6455 §5.5)")
            return
        if opcode == OPCODE_CONTINUATION and not self._opcode:
            raise FrameError("a continuation frame with no message to continue (RFC 6455 §5.4)")
        if opcode != OPCODE_CONTINUATION and self._opcode:
            raise FrameError("a new message before the fragmented one ended (RFC 6455 §5.4)")
        if length > self.max_frame:
            raise FrameError(f"a frame of {length} bytes, over the limit of {self.max_frame}", 1009)

    def _collect(self, payload: bytes) -> None:
        # Each fragment counts its 2-byte minimal header too: endless empty fragments add no payload,
        # but must still reach the limit instead of growing _parts (and the call) without end.
        self._collected += len(payload) + 2
        if self._collected > self.max_message:
            raise FrameError(f"a fragmented message past the limit of {self.max_message} bytes", 1009)
        self._parts.append(payload)


def _unmask(data: bytes | bytearray, start: int, length: int, key: bytes) -> bytes:
    """XOR ``length`` bytes of ``data`` from ``start`` with the 4-byte ``key`` (masking is its own
    inverse), four bytes at a time with numpy when the length allows."""
    if length & 3 == 0:
        words = np.frombuffer(data, "<u4", length >> 2, start)
        return (words ^ int.from_bytes(key, "little")).tobytes()
    raw = np.frombuffer(data, np.uint8, length, start)
    return (raw ^ np.resize(np.frombuffer(key, np.uint8), length)).tobytes()
