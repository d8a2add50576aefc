"""A misbehaving Athos realtime server, for the tests: a plain-socket script run as a subprocess.

::

    python tests/support/hostile.py SCRIPT --report PATH [--lifetime SECONDS]

It listens on a free port of 127.0.0.1, answers each connection with a correct WebSocket upgrade
(RFC 6455 §4.2.2), reads the client's first message (``join``), then plays one scripted
misbehaviour (``SCRIPTS``: giant frame headers, endless fragments, RFC violations, bad JSON, messages
out of order, a Close frame, a trickled handshake, a hang-up or a resume never answered). An
``HTTP_SCRIPTS`` script answers any plain HTTP request instead (the REST API's misbehaviours: an
answer trickled a byte at a time, a 300 MB body, an HTML page where JSON belongs).

After a WebSocket script it goes on reading what the client sends, answers a
``hangup`` with ``ended`` and Close 1000, and stops at EOF. Everything it sees is appended to the
report as JSON lines (the first line gives the port), so a test can assert what the client did on
the wire. It exits by itself after ``--lifetime`` seconds; tests also stop it by its pid.

Standard library only, and no athos_load: the frames it sends are the ones the product's framer
must refuse, so they are built by hand here. Not a thread in the test process: the tests run
monkey-patched by gevent, and a server sharing that hub would share the client's scheduling.
:class:`HostilePeer` is the test side: start the script, wait for its report, stop it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
STREAM_LIMIT = 128 << 20  # what a streaming script sends at most: far past any sane client limit
CHUNK = 1 << 20
IO_TIMEOUT = 5.0  # per send: a client that stops reading cannot hold the script (reads wait to the deadline)
TRICKLE_GAP = 0.2  # between the bytes of a trickled answer: far under any per-read timeout
PAUSE = 0.1  # after ready, so the misbehaviour reaches a call in progress, not a connect()
READY = {"type": "ready", "persona": {"name": "Mallory"}, "callId": "athos_call_hostile", "resumeToken": "rt"}


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One frame as a server would send it, or as it must not: ``rsv`` sets reserved bits (0–7),
    ``mask`` masks it (a client's duty, never a server's), ``length`` claims another payload size."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode])
    masked = 0x80 if mask else 0
    if n < 126:
        head += bytes([masked | n])
    elif n < 1 << 16:
        head += bytes([masked | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([masked | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def text(obj: dict[str, Any]) -> bytes:
    return frame(TEXT, json.dumps(obj).encode())


class Connection:
    """One accepted client: the handshake, its frames in, the script's bytes out, the report."""

    def __init__(self, sock: socket.socket, log: Callable[..., None], deadline: float, index: int = 0) -> None:
        self.sock = sock
        self.index = index  # how many connections the server accepted before this one
        self.log = log
        self.deadline = deadline
        self.buffer = b""
        self.answered_hangup = False
        sock.settimeout(IO_TIMEOUT)

    # -- reading ---------------------------------------------------------------------------------

    def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            if time.monotonic() > self.deadline:
                return False
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue  # a quiet client is not a gone one: wait for it until the deadline
            except OSError:  # a reset: nothing more comes
                return False
            if not data:
                return False
            self.buffer += data
        return True

    def _take(self, n: int) -> bytes | None:
        if not self._fill(n):
            return None
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def read_request(self) -> tuple[str, dict[str, str]] | None:
        """The HTTP request line and headers (lower-case names); None if the client gave none."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 16384 or not self._fill(len(self.buffer) + 1):
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.log(event="request", line=lines[0])
        return lines[0], headers

    def handshake(self, request: tuple[str, dict[str, str]], trickle: bool = False) -> bool:
        """Answer the WebSocket upgrade (RFC 6455 §4.2.2); ``trickle``: a byte at a time, slowly."""
        line, headers = request
        key = headers.get("sec-websocket-key", "")
        if not line.startswith("GET ") or headers.get("upgrade", "").lower() != "websocket" or not key:
            self.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        answer = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        if not (self.trickle(answer) if trickle else self.send(answer)):
            return False
        self.log(event="handshake", path=line.split(" ")[1])
        return True

    def read_body(self, headers: dict[str, str]) -> bytes:
        return self._take(int(headers.get("content-length") or 0)) or b""

    def read_frame(self) -> tuple[int, bytes] | None:
        """The client's next frame, unmasked; None at EOF, a reset, a timeout or the deadline."""
        head = self._take(2)
        if head is None:
            return None
        opcode, n = head[0] & 0x0F, head[1] & 0x7F
        if n >= 126:
            ext = self._take(2 if n == 126 else 8)
            if ext is None:
                return None
            n = int.from_bytes(ext, "big")
        key = self._take(4) if head[1] & 0x80 else b"\0\0\0\0"
        payload = self._take(n) if key is not None else None
        if payload is None:
            return None
        return opcode, bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def record(self, opcode: int, payload: bytes) -> None:
        if opcode == TEXT:
            try:
                kind = json.loads(payload).get("type")
            except (ValueError, AttributeError):
                kind = None
            self.log(event="text", type=kind)
        elif opcode == CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self.log(event="close", code=code, reason=payload[2:].decode("utf-8", "replace"))
        elif opcode != BINARY:  # audio is not worth a line each
            self.log(event="frame", opcode=opcode, length=len(payload))

    # -- writing ---------------------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def flood(self, chunks: Iterable[bytes]) -> None:
        """Send ``chunks`` until the client cuts us off; report how much got out and whether it did."""
        sent, ok = 0, True
        for chunk in chunks:
            if not (ok := time.monotonic() < self.deadline and self.send(chunk)):
                break
            sent += len(chunk)
        self.log(event="streamed", bytes=sent, cut_off=not ok)

    def trickle(self, data: bytes, gap: float = TRICKLE_GAP) -> bool:
        """Send ``data`` a byte at a time, ``gap`` apart: every read the client makes returns in
        time, so only a deadline on the whole exchange can stop it. False if the client left."""
        for i in range(len(data)):
            if time.monotonic() > self.deadline or not self.send(data[i : i + 1]):
                self.log(event="trickled", bytes=i, cut_off=True)
                return False
            time.sleep(gap)
        self.log(event="trickled", bytes=len(data), cut_off=False)
        return True

    def ready(self) -> None:
        self.send(text(READY))
        time.sleep(PAUSE)

    # -- the connection --------------------------------------------------------------------------

    def serve(self, script: str) -> None:
        request = self.read_request()
        if request is None:
            return
        if script in HTTP_SCRIPTS:
            HTTP_SCRIPTS[script](self, request)
            return
        if request[1].get("upgrade", "").lower() != "websocket":  # REST behaves: register, mint, redeem
            self.read_body(request[1])
            self.send(http_answer("200 OK", rest_answer(request)))
            return
        if not self.handshake(request, trickle=script == "trickle-handshake"):
            return
        first = self.read_frame()
        if first is None:
            self.log(event="eof")
            return
        self.record(*first)
        SCRIPTS[script](self)
        self.drain()

    def drain(self, answer_hangup: bool = True) -> None:
        """Read until the client goes: answer a hangup as a platform would, note its Close."""
        while (got := self.read_frame()) is not None:
            opcode, payload = got
            self.record(opcode, payload)
            if opcode == TEXT and b'"hangup"' in payload and answer_hangup and not self.answered_hangup:
                self.answered_hangup = True
                ended = {"type": "ended", "callId": READY["callId"], "durationSec": 1.0, "reason": "hangup"}
                self.send(text(ended) + frame(CLOSE, (1000).to_bytes(2, "big")))
            elif opcode == PING:
                self.send(frame(PONG, payload))
        self.log(event="eof")


# -- the misbehaviours: what the server does after the client's join --------------------------------


def huge_header(c: Connection) -> None:
    """A binary frame claiming 2^62 bytes, then as many as the client will take."""
    c.ready()
    c.flood(itertools.chain([frame(BINARY, length=1 << 62)], itertools.repeat(bytes(CHUNK), STREAM_LIMIT // CHUNK)))


def endless_fragments(c: Connection) -> None:
    """A text message begun and continued forever, never final."""
    c.ready()
    part = bytes(64 << 10)
    more = frame(CONTINUATION, part, fin=False) * 16
    c.flood(itertools.chain([frame(TEXT, part, fin=False)], itertools.repeat(more, STREAM_LIMIT // len(more))))


def empty_fragments(c: Connection) -> None:
    """Endless fragments with no payload: 2-byte frames that add nothing to the message's size."""
    c.ready()
    more = frame(CONTINUATION, fin=False) * (CHUNK // 2)
    c.flood(itertools.chain([frame(TEXT, fin=False)], itertools.repeat(more, STREAM_LIMIT // len(more))))


def big_text(c: Connection) -> None:
    """One 50 MB text frame (valid JSON, if anyone read that far)."""
    c.ready()
    body = b'{"type":"userSpeaking","speaking":true,"pad":"' + b"x" * (50_000_000 - 48) + b'"}'
    whole = frame(TEXT, body)
    c.flood(whole[i : i + CHUNK] for i in range(0, len(whole), CHUNK))


def big_control(c: Connection) -> None:
    c.ready()
    c.send(frame(PING, bytes(126)))  # RFC 6455 §5.5: at most 125 bytes


def reserved_bits(c: Connection) -> None:
    c.ready()
    c.send(frame(TEXT, b'{"type":"userSpeaking","speaking":true}', rsv=4))  # RSV1, no extension agreed


def reserved_opcode(c: Connection) -> None:
    c.ready()
    c.send(frame(0x3, b"?"))


def orphan_continuation(c: Connection) -> None:
    c.ready()
    c.send(frame(CONTINUATION, b'{"type":"userSpeaking","speaking":true}'))


def interleaved(c: Connection) -> None:
    c.ready()
    c.send(frame(TEXT, b'{"type":', fin=False) + frame(TEXT, b'{"type":"userSpeaking","speaking":true}'))


def masked_frame(c: Connection) -> None:
    c.ready()
    c.send(frame(TEXT, b'{"type":"userSpeaking","speaking":true}', mask=b"\x12\x34\x56\x78"))


def bad_json(c: Connection) -> None:
    c.ready()
    c.send(frame(TEXT, b'{"type": "userSpeaking", "speaking": tru'))


def deep_json(c: Connection) -> None:
    c.ready()
    nested = b"[" * 100_000 + b"]" * 100_000
    c.send(frame(TEXT, b'{"type":"userSpeaking","speaking":true,"x":' + nested + b"}"))


def huge_number(c: Connection) -> None:
    c.ready()
    duration = "9" * 400  # a valid JSON number no float holds
    c.send(frame(TEXT, f'{{"type":"ended","callId":"{READY["callId"]}","durationSec":{duration}}}'.encode()))


def ready_twice(c: Connection) -> None:
    c.ready()
    c.send(text(READY))


def ended_before_ready(c: Connection) -> None:
    c.send(text({"type": "ended", "callId": READY["callId"], "durationSec": 0.0, "reason": "hangup"}))


def ended_with_ready(c: Connection) -> None:
    """The call ends in the same write as its ready (a persona that hangs up at once)."""
    ended = {"type": "ended", "callId": READY["callId"], "durationSec": 0.0, "reason": "persona"}
    c.send(text(READY) + text(ended) + text(ended))  # and a second ended, which nothing may follow


def failed_with_ready(c: Connection) -> None:
    """Ready, an error and the end, in one write: the call connected, then failed."""
    error = {"type": "error", "code": "internal_error", "message": "the persona crashed"}
    ended = {"type": "ended", "callId": READY["callId"], "durationSec": 0.0, "reason": "error"}
    c.send(text(READY) + text(error) + text(ended))


def unknown_event(c: Connection) -> None:
    """A message type from a newer platform, then an ordinary turn: the call must go on."""
    c.ready()
    c.send(text({"type": "transcriptDelta", "text": "hello"}))
    c.send(text({"type": "userSpeaking", "speaking": True}) + text({"type": "userSpeaking", "speaking": False}))


def trickle_handshake(c: Connection) -> None:
    """The upgrade was answered a byte at a time (see :meth:`Connection.serve`); then a call."""
    c.ready()


def silent_hangup(c: Connection) -> None:
    """A platform gone half-open: it hears the hang-up (and everything else) and never answers."""
    c.ready()
    c.drain(answer_hangup=False)


def unanswered_resume(c: Connection) -> None:
    """The call drops (no Close frame); the resume on the next connection is read, never answered."""
    if c.index == 0:
        c.ready()
        c.sock.shutdown(socket.SHUT_RDWR)
    else:
        c.drain(answer_hangup=False)


# A call's timeline, in seconds after ready: the persona answers each of two rep turns whatever the
# rep does (a timeline, not a reaction), so the same timeline can be played to any transport
# (tests/test_transport_seam.py plays it to a fake one too).
VOICED = b"\x00\x40\x00\xc0" * 160  # 20 ms of a loud square wave: a frame with sound
TIMELINE: tuple[tuple[float, dict[str, Any] | bytes], ...] = (
    (0.15, {"type": "userSpeaking", "speaking": True}),
    (0.45, {"type": "userSpeaking", "speaking": False}),
    (0.70, {"type": "personaSpeaking", "speaking": True}),
    (0.75, VOICED), (0.77, VOICED), (0.79, VOICED),
    (1.20, {"type": "personaSpeaking", "speaking": False}),
    (1.45, {"type": "userSpeaking", "speaking": True}),
    (1.75, {"type": "userSpeaking", "speaking": False}),
    (2.00, {"type": "personaSpeaking", "speaking": True}),
    (2.06, VOICED), (2.08, VOICED),
    (2.40, {"type": "personaSpeaking", "speaking": False}),
)  # fmt: skip


def timeline(c: Connection) -> None:
    """A well-behaved call that plays :data:`TIMELINE` from ready on (from a thread, while the
    connection's reader answers the hang-up)."""
    c.send(text(READY))
    ready = time.monotonic()

    def play() -> None:
        for offset, message in TIMELINE:
            time.sleep(max(0.0, ready + offset - time.monotonic()))
            if not c.send(frame(BINARY, message) if isinstance(message, bytes) else text(message)):
                return

    threading.Thread(target=play, daemon=True).start()


def closer(body: bytes) -> Callable[[Connection], None]:
    def close(c: Connection) -> None:
        c.ready()
        c.send(frame(CLOSE, body))

    return close


SCRIPTS: dict[str, Callable[[Connection], None]] = {
    "huge-header": huge_header,
    "endless-fragments": endless_fragments,
    "empty-fragments": empty_fragments,
    "big-text": big_text,
    "big-control": big_control,
    "reserved-bits": reserved_bits,
    "reserved-opcode": reserved_opcode,
    "orphan-continuation": orphan_continuation,
    "interleaved": interleaved,
    "masked-frame": masked_frame,
    "bad-json": bad_json,
    "deep-json": deep_json,
    "huge-number": huge_number,
    "ready-twice": ready_twice,
    "ended-before-ready": ended_before_ready,
    "ended-with-ready": ended_with_ready,
    "failed-with-ready": failed_with_ready,
    "unknown-event": unknown_event,
    "close-1000": closer((1000).to_bytes(2, "big") + b"bye"),
    "close-4000": closer((4000).to_bytes(2, "big") + b"bye"),
    "close-1006": closer((1006).to_bytes(2, "big")),  # describes a lost connection; never on the wire
    "close-short": closer(b"\x03"),  # a 1-byte body: half a code
    "trickle-handshake": trickle_handshake,
    "silent-hangup": silent_hangup,
    "unanswered-resume": unanswered_resume,
    "timeline": timeline,
}


# -- REST misbehaviours: an answer to any HTTP request that is not an upgrade -----------------------


def http_answer(status: str, body: bytes, content_type: str = "application/json", length: int | None = None) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


MINTED = json.dumps({"token": "tok_hostile", "expiresAt": "2099-01-01T00:00:00Z"}).encode()
AGENT = json.dumps({"agent": {"id": "athos_agent_h", "agencyId": "athos_agency_h", "platformAgentId": "r"}}).encode()


def rest_answer(request: tuple[str, dict[str, str]]) -> bytes:
    """What a well-behaved External API answers: an agent, a session token, or a redeem whose
    connectionUrl is this peer's realtime endpoint (where the misbehaviour waits)."""
    path = request[0].split(" ")[1]
    if path.endswith("/agents"):
        return AGENT
    if path.endswith("/roleplay/session"):
        url = f"ws://{request[1].get('host', LOOPBACK)}/v1/realtime"
        redeemed = {"connectionUrl": url, "connectionTicket": "tkt_hostile", "callId": READY["callId"],
                    "sessionId": "ext_h", "persona": {"name": "Hostile"}}  # fmt: skip
        return json.dumps(redeemed).encode()
    return MINTED


def trickle_http(c: Connection, request: tuple[str, dict[str, str]]) -> None:
    """A correct answer, a byte at a time."""
    c.read_body(request[1])
    c.trickle(http_answer("200 OK", MINTED))


def huge_body(c: Connection, request: tuple[str, dict[str, str]]) -> None:
    """A 300 MB answer (as claimed, and sent for as long as the client reads)."""
    c.read_body(request[1])
    size = 300_000_000
    c.flood(itertools.chain([http_answer("200 OK", b"", length=size)], itertools.repeat(bytes(CHUNK), size // CHUNK)))


def html_ok(c: Connection, request: tuple[str, dict[str, str]]) -> None:
    """A 200 with an HTML page, as a captive portal or a misrouted proxy answers."""
    c.read_body(request[1])
    c.send(http_answer("200 OK", b"<html><body>Welcome</body></html>", "text/html"))


def html_error(c: Connection, request: tuple[str, dict[str, str]]) -> None:
    """A 502 from a proxy, with its HTML page instead of the platform's error body."""
    c.read_body(request[1])
    c.send(http_answer("502 Bad Gateway", b"<html><body>Bad Gateway</body></html>", "text/html"))


HTTP_SCRIPTS: dict[str, Callable[[Connection, tuple[str, dict[str, str]]], None]] = {
    "trickle-http": trickle_http,
    "huge-body": huge_body,
    "html-ok": html_ok,
    "html-error": html_error,
}


def serve(script: str, report: Path, lifetime: float) -> None:
    deadline = time.monotonic() + lifetime
    with report.open("a") as out, socket.create_server((LOOPBACK, 0)) as server:

        def log(**fields: Any) -> None:
            out.write(json.dumps(fields) + "\n")
            out.flush()

        log(event="listening", port=server.getsockname()[1])
        server.settimeout(0.2)
        index = 0
        while time.monotonic() < deadline:
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            log(event="connection")
            with sock:
                Connection(sock, log, deadline, index).serve(script)
            index += 1


# -- the test side --------------------------------------------------------------------------------


@dataclass
class HostilePeer:
    """A running hostile server; ``url`` is its realtime endpoint. Stop it with :meth:`stop`."""

    proc: subprocess.Popen[bytes]
    report: Path
    port: int

    @classmethod
    def start(cls, script: str, report: Path, lifetime: float = 30.0, timeout: float = 10.0) -> HostilePeer:
        if script not in SCRIPTS and script not in HTTP_SCRIPTS:
            raise ValueError(f"unknown script {script!r}")
        proc = subprocess.Popen(
            [sys.executable, __file__, script, "--report", str(report), "--lifetime", str(lifetime)],
            stdout=subprocess.DEVNULL,
        )
        peer = cls(proc, report, 0)
        try:
            peer.port = peer.wait_for("listening", timeout)["port"]
        except BaseException:
            peer.stop()
            raise
        return peer

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/v1/realtime"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        """What the server has reported so far (complete lines only: it may be writing one)."""
        if not self.report.exists():
            return []
        lines = self.report.read_text().split("\n")[:-1]
        return [json.loads(line) for line in lines]

    def wait_for(self, event: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first reported ``event`` with ``fields``, waiting for it up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            over = self.proc.poll() is not None or time.monotonic() > deadline  # then one last look
            for entry in self.events():
                if entry["event"] == event and fields.items() <= entry.items():
                    return entry
            if over:
                seen = self.events()
                raise AssertionError(f"the hostile server reported no {event} {fields} within {timeout}s: {seen}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by its pid; the script holds nothing that needs a clean exit
        self.proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", choices=sorted([*SCRIPTS, *HTTP_SCRIPTS]))
    parser.add_argument("--report", type=Path, required=True, help="JSON lines of what the server saw")
    parser.add_argument("--lifetime", type=float, default=30.0, help="seconds before it exits by itself")
    args = parser.parse_args()
    serve(args.script, args.report, args.lifetime)


if __name__ == "__main__":
    main()
