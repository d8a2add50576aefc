"""The wire layer's exceptions. Callers branch on the type, never on the message::

ProtocolError
├── LocalProtocolError    we broke the protocol (a command in the wrong state)
├── RemoteProtocolError   the peer sent something unparseable or out of place
│   └── UnknownMessage    well-formed, of a type this version does not know (counted, ignored)
├── FrameError            the peer broke RFC 6455 framing or a size limit (also a ValueError)
└── SignatureError        a webhook whose signature, timestamp or body does not check out
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of the wire layer's exceptions."""


class LocalProtocolError(ProtocolError):
    """We broke the protocol: a command that the call's state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: bad JSON, an unknown message, a missing field."""


class UnknownMessage(RemoteProtocolError):
    """A well-formed message of a type this version does not know: a newer peer may send one."""


class FrameError(RemoteProtocolError, ValueError):
    """A peer broke RFC 6455 or a size limit; the connection cannot go on (the message says how).

    ``close_code`` is what to close with: 1009 for a message too big, 1002 for the rest (§7.4.1).
    """

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class SignatureError(ProtocolError):
    """A webhook delivery that must be rejected; ``reason`` is a short stable label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
