"""Session tokens (minted by ``POST /session``, redeemed once by ``POST /roleplay/session``) and the
connection tickets a redeem hands out (used once by a realtime join): one store of each kind."""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass

from athos_load.wire import ErrorCode

# Expired tokens are kept this long after expiry so a late join hears token_expired, not token_invalid.
EXPIRED_GRACE = 60.0


@dataclass(frozen=True, slots=True)
class SimAgent:
    """A registered rep, as the simulator's roster keeps it."""

    id: str
    agency_id: str
    platform_agent_id: str
    name: str


@dataclass(slots=True)
class Token:
    value: str
    drill_key: str  # a ticket's drill; "" for a session token (the drill comes with the redeem)
    persona_name: str
    webhook_url: str | None
    expires_mono: float
    expires_wall: float
    redeemed: bool = False
    agent: SimAgent | None = None
    call_id: str = ""  # a ticket's: the call the redeem started


class TokenStore:
    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._tokens: dict[str, Token] = {}  # insertion order = expiry order (one TTL for all)

    def __len__(self) -> int:
        return len(self._tokens)

    def mint(
        self, drill_key: str, persona_name: str, webhook_url: str | None, *, agent: SimAgent | None = None,
        call_id: str = "", prefix: str = "tok_",
    ) -> Token:  # fmt: skip
        value = prefix + secrets.token_urlsafe(24)
        token = Token(
            value,
            drill_key,
            persona_name,
            webhook_url,
            expires_mono=time.monotonic() + self._ttl,
            expires_wall=time.time() + self._ttl,
            agent=agent,
            call_id=call_id,
        )
        self._tokens[value] = token
        return token

    def check(self, value: str, drill_key: str, now: float) -> Token | ErrorCode:
        """The token if a join may redeem it, else the code that refuses it (in the documented order).

        The caller marks it redeemed once the join is accepted, so a join refused later (busy
        platform, bad audio format) leaves the token usable for a retry.
        """
        token = self._tokens.get(value)
        if token is None:
            return ErrorCode.TOKEN_INVALID
        if now >= token.expires_mono:
            return ErrorCode.TOKEN_EXPIRED
        if token.redeemed:
            return ErrorCode.TOKEN_REDEEMED
        if drill_key != token.drill_key:
            return ErrorCode.UNKNOWN_DRILL
        return token

    def check_session(self, value: str, now: float) -> Token | ErrorCode:
        """A session token a redeem may spend, else the External API's code that refuses it."""
        token = self._tokens.get(value)
        if token is None:
            return ErrorCode.INVALID_TOKEN
        if now >= token.expires_mono:
            return ErrorCode.API_TOKEN_EXPIRED
        if token.redeemed:
            return ErrorCode.TOKEN_ALREADY_USED
        return token

    def evict(self, now: float) -> None:
        """Drop tokens expired more than ``EXPIRED_GRACE`` ago (oldest first, stop at the first live one)."""
        tokens = self._tokens
        while tokens:
            value, token = next(iter(tokens.items()))
            if now < token.expires_mono + EXPIRED_GRACE:
                break
            del tokens[value]


class TokenBucket:
    """Rate limit for the mint endpoint; ``rate`` 0 means unlimited. Holds at most one second's worth.
    A refused take is answered ``429`` with ``Retry-After`` (:meth:`retry_after`)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._level = self._capacity
        self._stamp = time.monotonic()

    def take(self, now: float) -> bool:
        if self._rate <= 0:
            return True
        self._level = min(self._capacity, self._level + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until a token is back in the bucket (at least 1: Retry-After has no fractions)."""
        return max(1, math.ceil((1.0 - self._level) / self._rate)) if self._rate > 0 else 1
