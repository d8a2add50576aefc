"""Loopback networking for tests: every server a test starts listens on 127.0.0.1."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nothing listened on a moment ago, for a child process that must be told its
    port up front (Locust, Prometheus). A server that can report the port it bound should bind 0."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
