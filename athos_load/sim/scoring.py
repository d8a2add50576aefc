"""Scoring after a call ends: a queue drained by a few workers, then the ``call.scored`` webhook.

Like the platform, scoring is a bottleneck with a queue: ``--scorers`` workers each spend a drawn
``--score-delay`` per call, so under load the queue and the end-to-score time grow; a share of the
calls (``--score-fail-rate``) fails to score. Delivery runs in its own task per event (a retry must
not hold a scorer), as Athos documents it: a failed attempt is retried once about 5 minutes later
(``--webhook-retries``, ``--webhook-retry-delay``) with the same body and ``X-Athos-Webhook-Id``,
re-signed; it can be made to fail (``--webhook-failure-rate``) or to arrive twice (``--webhook-duplicate-rate``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time

import aiohttp

from athos_load.wire import (
    REQUEST_ID_PREFIX,
    SIGNATURE_HEADER,
    WEBHOOK_ID_HEADER,
    CallStatus,
    ScoredEvent,
    sign_webhook,
)

from .calls import Call, CallBook
from .config import SimConfig
from .counters import Counters
from .truth import TruthLog

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT = 10.0  # Athos counts no answer within 10 s as a failed delivery
SCORE_FAILURE = ("SCORING_INCOMPLETE", "Athos did not finish processing this call.")
IDEAL_REP_SHARE = 0.45  # share of talk time a rep scores best at (listen more than you talk)


def score_call(call: Call) -> float:
    """0-100 from the rep's share of the talk time: best at ``IDEAL_REP_SHARE``, 0 for a monologue."""
    total = call.rep_talk + call.persona_talk
    if total <= 0:
        return 0.0
    share = call.rep_talk / total
    miss = abs(share - IDEAL_REP_SHARE) / (1.0 - IDEAL_REP_SHARE)
    return round(100.0 * max(0.0, 1.0 - miss), 1)


class Scorer:
    def __init__(
        self, config: SimConfig, book: CallBook, truth: TruthLog, counters: Counters, rng: random.Random
    ) -> None:
        self._config = config
        self._book = book
        self._truth = truth
        self._counters = counters
        self._rng = rng
        self._queue: asyncio.Queue[Call] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def submit(self, call: Call) -> None:
        self._queue.put_nowait(call)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT))
        for _ in range(self._config.scorers):
            self._spawn(self._work())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("scoring task failed", exc_info=task.exception())

    async def _work(self) -> None:
        while True:
            call = await self._queue.get()
            work = self._config.score_delay.sample(self._rng)
            await asyncio.sleep(work)
            now = time.monotonic()
            delay = now - call.ended_at if call.ended_at is not None else None
            failed = self._rng.random() < self._config.score_fail_rate
            if failed:
                call.status, call.failure = CallStatus.NOT_SCORED, SCORE_FAILURE[0]
                self._counters.scores_failed += 1
                self._truth.record("score_failed", call.id, reason=call.failure, delay=_r(delay), work=_r(work))
            else:
                call.score = score_call(call)
                call.status = CallStatus.SCORED
                self._truth.record("scored", call.id, score=call.score, delay=_r(delay), work=_r(work))
            call.scored_wall = time.time()
            self._book.scored(call, now)
            url = call.webhook_url or self._config.webhook_url
            if url:
                agent = call.agent
                event = ScoredEvent(
                    call.id, not failed, call.scored_wall, agent_id=agent.id if agent else "",
                    agency_id=agent.agency_id if agent else "",
                    platform_agent_id=agent.platform_agent_id if agent else None,
                    request_id=REQUEST_ID_PREFIX + secrets.token_hex(12),
                    reason=SCORE_FAILURE[0] if failed else None, reason_message=SCORE_FAILURE[1] if failed else None,
                )  # fmt: skip
                self._spawn(self._deliver(url, event, "wh_" + secrets.token_hex(12)))

    async def _deliver(self, url: str, event: ScoredEvent, webhook_id: str) -> None:
        ok = await self._attempts(url, event, webhook_id, duplicate=False)
        if ok and self._rng.random() < self._config.webhook_duplicate_rate:
            await self._attempts(url, event, webhook_id, duplicate=True)

    async def _attempts(self, url: str, event: ScoredEvent, webhook_id: str, duplicate: bool) -> bool:
        """One delivery with its retries; True once a 2xx came back."""
        assert self._session is not None
        body = event.serialize().encode()
        for attempt in range(1, self._config.webhook_retries + 2):
            status: int | None = None
            error: str | None = None
            if self._rng.random() < self._config.webhook_failure_rate:
                error = "injected"
            else:
                headers = {
                    SIGNATURE_HEADER: sign_webhook(self._config.webhook_secret, int(time.time()), body),
                    WEBHOOK_ID_HEADER: webhook_id,
                    "Content-Type": "application/json",
                }
                try:
                    async with self._session.post(url, data=body, headers=headers) as response:
                        status = response.status
                        await response.read()
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    error = type(exc).__name__
            ok = status is not None and 200 <= status < 300
            self._truth.record(
                "webhook_attempt", event.call_id, webhookId=webhook_id, attempt=attempt, ok=ok, status=status,
                duplicate=duplicate, error=error,
            )  # fmt: skip
            if ok:
                self._counters.webhooks_delivered += 1
                return True
            log.info("webhook %s attempt %d for %s failed: %s", webhook_id, attempt, event.call_id, error or status)
            if attempt <= self._config.webhook_retries:
                await asyncio.sleep(self._config.webhook_retry_delay)
        self._counters.webhooks_failed += 1
        log.warning("webhook %s for %s given up after %d attempts", webhook_id, event.call_id, attempt)
        return False


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
