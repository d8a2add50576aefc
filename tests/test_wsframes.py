"""The framer against two references: websocket-client's parser and wsproto, on both sides."""

import os
import random

import pytest
from websocket._abnf import ABNF, frame_buffer
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

from athos_load.audio import Clip
from athos_load.session import wire_frames
from athos_load.wire import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_TEXT,
    AudioFormat,
    FrameReader,
    MaskedFrames,
    client_frame,
    close_payload,
    mask_frames,
    masked,
)


def parse(data: bytes):
    chunks = [data]

    def recv(n):
        out, chunks[0] = chunks[0][:n], chunks[0][n:]
        return out

    buffer = frame_buffer(recv, skip_utf8_validation=True)
    frames = []
    while chunks[0]:
        frames.append(buffer.recv_frame())
    return frames


@pytest.mark.parametrize("length", [0, 5, 125, 126, 640, 65535, 65536])
def test_frames_parse_back_to_their_payloads(length):
    payloads = [os.urandom(length) for _ in range(4)]
    wire = mask_frames(payloads)
    for frame, payload in zip(parse(b"".join(wire)), payloads, strict=True):
        assert frame.opcode == ABNF.OPCODE_BINARY and frame.fin and frame.mask
        assert frame.data == payload


def test_every_frame_has_its_own_mask_and_clips_are_framed_once():
    payloads = tuple(bytes(640) for _ in range(50))
    wire = mask_frames(payloads)
    keys = {frame[4:8] for frame in wire}
    assert len(keys) > 45  # random per frame (collisions of 32-bit keys are vanishingly rare)
    assert masked(wire) is wire and masked(payloads) is not wire  # masked once; raw payloads are masked anew
    clip = Clip(None, AudioFormat(), payloads, ())
    wired = wire_frames(clip)  # the reference transport frames a clip once per process
    assert isinstance(wired, MaskedFrames) and wire_frames(clip) is wired
    assert [f.data for f in parse(b"".join(wired))] == list(payloads)
    mixed = mask_frames([b"ab", b"abcd"])
    assert [f.data for f in parse(b"".join(mixed))] == [b"ab", b"abcd"]


def raw_frame(opcode, payload, fin=True):
    """Built by hand, so a test can make it non-final; for final frames it must equal server_frame."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


def test_reader_splits_coalesced_and_partial_frames():
    stream = (
        raw_frame(0x2, bytes(640))
        + raw_frame(0x1, b'{"type":"userSpeaking","speaking":true}')
        + raw_frame(0x2, bytes(70000))
        + raw_frame(0x1, b"he", fin=False)
        + raw_frame(0x9, b"ping")  # a control frame between fragments
        + raw_frame(0x0, b"llo")
        + raw_frame(0x8, (1000).to_bytes(2, "big"))
    )
    reader = FrameReader()
    got = []
    for i in range(0, len(stream), 333):  # arbitrary TCP segmentation
        got += reader.feed(stream[i : i + 333])
    assert [(op, len(p)) for op, p in got] == [(2, 640), (1, 39), (2, 70000), (9, 4), (1, 5), (8, 2)]
    assert got[4][1] == b"hello"
    with pytest.raises(ValueError, match="must not mask"):
        FrameReader().feed(bytes([0x82, 0x80 | 4]) + bytes(8))


@pytest.mark.parametrize(
    ("stream", "says"),
    [
        # a header claiming 2^62 bytes: refused from its 10 header bytes, before any buffering
        (bytes([0x82, 127]) + (1 << 62).to_bytes(8, "big"), "over the limit"),
        (raw_frame(0x1, bytes(2 << 20)), "over the limit"),
        (b"".join(raw_frame(0x2 if i == 0 else 0x0, bytes(60_000), fin=False) for i in range(20)), "fragmented"),
        (raw_frame(0x9, bytes(126)), "control frame"),
        (raw_frame(0x9, b"x", fin=False), "control frame"),
        (bytes([0x80 | 0x40 | 0x1, 2]) + b"{}", "reserved bits"),
        (raw_frame(0x3, b"x"), "reserved opcode"),
        (raw_frame(0x0, b"orphan"), "no message to continue"),
        (raw_frame(0x1, b"a", fin=False) + raw_frame(0x1, b"b"), "before the fragmented one ended"),
    ],
)
def test_a_frame_past_the_limits_or_the_rfc_is_refused(stream, says):
    from athos_load.wire import FrameError, FrameReader

    reader = FrameReader()
    with pytest.raises(FrameError, match=says):
        for i in range(0, len(stream), 65_536):
            reader.feed(stream[i : i + 65_536])
    assert len(reader._buffer) <= 4 << 20  # what it held before refusing: bounded, whatever was claimed


def test_the_limits_are_the_readers_to_set():
    from athos_load.wire import FrameError, FrameReader

    assert FrameReader(max_frame=10_000_000).feed(raw_frame(0x2, bytes(2 << 20)))[0][0] == 0x2
    with pytest.raises(FrameError, match="limit of 100"):
        FrameReader(max_message=100).feed(raw_frame(0x1, bytes(60), fin=False) + raw_frame(0x0, bytes(60)))


# -- wsproto as the reference ------------------------------------------------------------------------

SIZES = [0, 1, 3, 125, 126, 127, 640, 65535, 65536, 70001]


@pytest.mark.parametrize("size", SIZES)
def test_our_frames_are_what_wsproto_reads_on_either_side(size):
    payload = bytes(random.Random(size).randrange(256) for _ in range(size))
    as_server = FrameProtocol(client=False, extensions=[])  # reads our client's frames
    text = "é" * (size // 2)
    as_server.receive_bytes(client_frame(OPCODE_TEXT, text.encode()) + mask_frames([payload])[0])
    frames = list(as_server.received_frames())
    assert [(f.opcode, f.payload) for f in frames] == [(Opcode.TEXT, text), (Opcode.BINARY, bytearray(payload))]
    as_client = FrameProtocol(client=True, extensions=[])  # reads our server's frames
    as_client.receive_bytes(raw_frame(OPCODE_BINARY, payload))
    assert [bytes(f.payload) for f in as_client.received_frames()] == [payload]


@pytest.mark.parametrize("size", SIZES)
def test_we_read_what_wsproto_writes_on_either_side(size):
    payload = bytes(random.Random(size).randrange(256) for _ in range(size))
    client = FrameProtocol(client=True, extensions=[])
    server = FrameProtocol(client=False, extensions=[])
    # wsproto fragments nothing itself; send one message in two fragments to check reassembly too
    masked = client.send_data(payload[: size // 2], fin=False) + client.send_data(payload[size // 2 :], fin=True)
    assert FrameReader(masked=True).feed(masked) == [(OPCODE_BINARY, payload)]
    assert FrameReader().feed(server.send_data(payload, fin=True)) == [(OPCODE_BINARY, payload)]
    assert FrameReader().feed(server.close(CloseReason.GOING_AWAY, "bye")) == [
        (OPCODE_CLOSE, close_payload(1001, "bye"))
    ]
