"""A fault-injecting TCP proxy between the tool and a platform, for the tests: a subprocess.

::

    python tests/support/faultproxy.py --target PORT [--lifetime SECONDS]

It listens on a free port of 127.0.0.1 and forwards every connection to ``127.0.0.1:PORT``, both
ways, until told otherwise on its standard input, one command per line:

``fin``        close every open connection cleanly (FIN both ways), as a platform restart would
``rst``        reset every open connection (SO_LINGER 0: RST both ways), as a crashed peer would
``blackhole``  from now on forward nothing and close nothing: connections go half-open, and new
               ones are accepted but never reach the target (a network path that silently died)
``pass``       forward again (connections held in the blackhole stay dead)

Each command is acknowledged on standard output (``ok fin 3``: three connections were cut) after
it took effect. It exits by itself after ``--lifetime`` seconds, or at EOF on its standard input.
Standard library only; a subprocess, not a thread, so the gevent-patched tests do not schedule it.
:class:`FaultProxy` is the test side; :func:`stalled` stalls the platform behind it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
CHUNK = 65536


@dataclass
class Pipe:
    """One proxied connection: the client's socket and the target's."""

    client: socket.socket
    target: socket.socket
    held: bool = False  # in the blackhole: nothing forwarded, nothing closed

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self.client, self.target


@dataclass
class Proxy:
    target: int
    listener: socket.socket = field(default_factory=lambda: socket.create_server((LOOPBACK, 0)))
    pipes: list[Pipe] = field(default_factory=list)
    blackhole: bool = False

    def __post_init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(sys.stdin, selectors.EVENT_READ, "command")

    def serve(self, lifetime: float) -> None:
        print(f"listening {self.listener.getsockname()[1]}", flush=True)
        deadline = time.monotonic() + lifetime
        while time.monotonic() < deadline:
            for key, _ in self.selector.select(timeout=0.2):
                if key.data == "accept":
                    self.accept()
                elif key.data == "command":
                    line = sys.stdin.readline()
                    if not line:
                        return  # the test is gone
                    self.command(line.strip())
                else:
                    self.forward(key.fileobj, key.data)  # type: ignore[arg-type]

    def accept(self) -> None:
        client, _ = self.listener.accept()
        if self.blackhole:
            self.pipes.append(Pipe(client, client, held=True))  # accepted, never answered
            return
        try:
            target = socket.create_connection((LOOPBACK, self.target), timeout=2)
        except OSError:
            client.close()  # the platform is down: refuse as it would
            return
        pipe = Pipe(client, target)
        self.pipes.append(pipe)
        for sock in pipe.sockets():
            sock.setblocking(False)
        self.selector.register(client, selectors.EVENT_READ, pipe)
        self.selector.register(target, selectors.EVENT_READ, pipe)

    def forward(self, sock: socket.socket, pipe: Pipe) -> None:
        other = pipe.target if sock is pipe.client else pipe.client
        try:
            data = sock.recv(CHUNK)
            if data:
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
                return
        except OSError:
            pass
        self.close(pipe)  # one side ended: end the other (a FIN is passed on as a FIN)

    def close(self, pipe: Pipe, reset: bool = False) -> None:
        for sock in set(pipe.sockets()):
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        if pipe in self.pipes:
            self.pipes.remove(pipe)

    def command(self, name: str) -> None:
        live = [p for p in self.pipes if not p.held]
        if name in ("fin", "rst"):
            for pipe in live:
                self.close(pipe, reset=name == "rst")
        elif name == "blackhole":
            self.blackhole = True
            for pipe in live:
                for sock in pipe.sockets():
                    self.selector.unregister(sock)  # read nothing more, close nothing
                pipe.held = True
        elif name == "pass":
            self.blackhole = False
        else:
            print(f"unknown {name}", flush=True)
            return
        print(f"ok {name} {len(live)}", flush=True)


# -- the test side --------------------------------------------------------------------------------


@contextlib.contextmanager
def stalled(pid: int) -> Iterator[None]:
    """The process ``pid`` (a platform started by the test) stopped with SIGSTOP for the block:
    it holds its sockets and answers nothing, as a platform in a long GC pause or swapped out."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class FaultProxy:
    """A running proxy to ``127.0.0.1:target``; ``port`` is where to connect instead."""

    def __init__(self, target: int, lifetime: float = 120.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--target", str(target), "--lifetime", str(lifetime)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"the fault proxy did not start: {line!r}")
        self.port = int(line.split()[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def inject(self, fault: str) -> int:
        """Inject ``fault`` (fin, rst, blackhole, pass); returns how many connections it hit."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(fault + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if answer[:2] != ["ok", fault]:
            raise RuntimeError(f"the fault proxy refused {fault!r}: {answer}")
        return int(answer[2])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by its pid
        self.proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=int, required=True, help="the port on 127.0.0.1 to forward to")
    parser.add_argument("--lifetime", type=float, default=120.0, help="seconds before it exits by itself")
    args = parser.parse_args()
    Proxy(args.target).serve(args.lifetime)


if __name__ == "__main__":
    main()
