"""Live counters of the simulator, shown by ``GET /healthz``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class Counters:
    """Plain integer attributes: incrementing one costs an attribute store on the hot path."""

    connections: int = 0  # open WebSocket connections
    fast_reader_connections: int = 0  # connections read by the wire framer in data_received (not aiohttp's reader)
    frames_in: int = 0  # rep audio frames received
    frames_out: int = 0  # persona audio frames sent
    frames_dropped: int = 0  # persona frames not sent because the client stopped reading
    minted: int = 0  # session tokens (each counts against --quota-calls)
    redeemed: int = 0  # session tokens redeemed: calls started
    rate_limited: int = 0  # mints answered 429
    joins: int = 0
    refused: int = 0  # joins and resumes answered with an error
    resumes: int = 0
    drops: int = 0
    webhooks_delivered: int = 0
    webhooks_failed: int = 0  # events given up on after every retry
    scores_failed: int = 0  # calls that ended not scored (call.scored success false)

    def to_wire(self) -> dict[str, Any]:
        return {_camel(k): v for k, v in asdict(self).items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
