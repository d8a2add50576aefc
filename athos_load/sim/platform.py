"""The simulated platform's decisions: minting, joining, turn-taking, faults, ending calls.

Nothing here knows aiohttp: the server hands in parsed messages and a :class:`Link` per
connection, and gets back typed answers (``MintResponse``, a :class:`Call`, or a protocol ``Error``
to send before closing with 1008). Timers are ``loop.call_later`` handles per call; persona audio
goes through the one :class:`Pacer`; latencies grow with the number of active calls.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import secrets
import time

import numpy as np

from athos_load.wire import (
    AGENCY_ID_PREFIX,
    AGENT_ID_PREFIX,
    CALL_ID_PREFIX,
    Agent,
    ApiErrorBody,
    AudioFormat,
    CallState,
    CallStatus,
    ConnectionLost,
    Ended,
    Error,
    ErrorCode,
    Join,
    MintRequest,
    MintResponse,
    Ready,
    Reconnected,
    RedeemRequest,
    Redemption,
    RegisterAgentRequest,
    RemoteProtocolError,
    Resume,
    parse_client_message,
)

from .calls import PERSONA_LINES, Call, CallBook, Impairments, Turn
from .config import Distribution, SimConfig
from .connection import Link, persona_wire_frames
from .counters import Counters
from .pacer import Pacer
from .scoring import Scorer
from .tokens import SimAgent, TokenBucket, TokenStore
from .truth import TruthLog
from .vad import STARTED, EnergyVad

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.1  # housekeeping tick: stalled rep audio
EVICT_INTERVAL = 1.0  # old tokens and calls
STALL_GRACE = 0.2  # no audio at all for hangover + this ends the rep's utterance


def _tag(token: str) -> str:
    """A short, stable prefix of a token: enough to correlate truth-log lines, useless to redeem."""
    return token[:12]


class Platform:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.truth = TruthLog(config.truth_log)
        self.counters = Counters()
        self.sessions = TokenStore(config.token_ttl)  # session tokens, spent by a redeem
        self.tokens = TokenStore(config.token_ttl)  # connection tickets, spent by a realtime join
        self.agents: dict[str, SimAgent] = {}  # the roster, by Athos id and by platformAgentId
        self.book = CallBook(config.call_retention, config.max_retained_calls)
        self.pacer = Pacer()
        self.scorer = Scorer(config, self.book, self.truth, self.counters, self.rng)
        self.live: set[Call] = set()  # calls with a connected client
        self._mint_bucket = TokenBucket(config.mint_rate)
        self._joining = 0  # joins accepted and waiting out the ready latency (they count as active)
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        persona_wire_frames(AudioFormat())  # build the default voice now, not inside the first call's join
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(c) for c in (self.pacer.run(), self.truth.run(), self._housekeeping())]
        await self.scorer.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.scorer.stop()
        self.truth.close()

    def health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "uptimeSec": round(time.monotonic() - self.started_at, 3),
            "activeCalls": self.book.active,
            "liveCalls": len(self.live),
            "totalCalls": self.book.total,
            "scoringQueue": self.scorer.backlog,
            "tokens": len(self.tokens),
            **self.counters.to_wire(),
            **self._pacer_lag(),
        }

    def _pacer_lag(self) -> dict[str, float | None]:
        if not self.pacer.lags:
            return {"pacerLagP99Ms": None, "pacerLagMaxMs": None}
        lags = np.fromiter(self.pacer.lags, dtype=np.float64)
        return {
            "pacerLagP99Ms": round(1000 * float(np.percentile(lags, 99)), 3),
            "pacerLagMaxMs": round(1000 * float(lags.max()), 3),
        }

    def _load_stretch(self) -> float:
        return 1.0 + self.config.load_slowdown * self.book.active / 100.0

    def _impairments(self, call: Call, seconds: float) -> Impairments | None:
        """The gaps and jitter of one persona utterance of ``seconds`` (None: a clean stream), both
        growing with load as latencies do: gaps come as a Poisson process over its audio."""
        cfg = self.config
        jitter = cfg.persona_jitter
        jittery = jitter.kind != "fixed" or jitter.a > 0
        if not cfg.persona_gaps and not jittery:
            return None
        stretch = self._load_stretch()
        gaps: dict[int, float] = {}
        if cfg.persona_gaps:
            frame = call.audio.frame_seconds
            rate = cfg.persona_gaps * stretch / 60.0
            t = self.rng.expovariate(rate)
            while t < seconds:
                gaps.setdefault(max(1, int(t / frame)), cfg.persona_gap.sample(self.rng))  # inside: not frame 0
                t += self.rng.expovariate(rate)
        return Impairments(gaps, (lambda: jitter.sample(self.rng) * stretch) if jittery else None)

    def _slowed(self, dist: Distribution) -> float:
        """A latency draw, stretched by load (a busy platform answers more slowly) and by the scale."""
        stretch = self._load_stretch()
        worse = self.config.degradation.factor(time.monotonic() - self.started_at, self.book.total)
        return dist.sample(self.rng) * stretch * self.config.latency_scale * worse

    # -- REST --------------------------------------------------------------------------------------

    def register(self, request: RegisterAgentRequest) -> tuple[Agent, str] | ApiErrorBody:
        """``POST /agents``: a new rep in a new agency named after them (the agent and the agency's name)."""
        known = self.agents.get(request.platform_agent_id)
        if known is not None:
            details = {"agentId": known.id, "agencyId": known.agency_id, "matchedOn": "platformAgentId"}
            return ApiErrorBody(ErrorCode.AGENT_ALREADY_EXISTS, "an agent with that platformAgentId is registered",
                                details=details)  # fmt: skip
        name = f"{request.first_name} {request.last_name}"
        agent = SimAgent(AGENT_ID_PREFIX + secrets.token_hex(8), AGENCY_ID_PREFIX + secrets.token_hex(8),
                         request.platform_agent_id, name)  # fmt: skip
        self.agents[agent.platform_agent_id] = self.agents[agent.id] = agent
        self.truth.record("agent", None, agentId=agent.id, platformAgentId=agent.platform_agent_id)
        wire = Agent(agent.id, agent.agency_id, agent.platform_agent_id, request.first_name, request.last_name,
                     time.time())  # fmt: skip
        return wire, name

    def mint(self, request: MintRequest) -> MintResponse | ApiErrorBody:
        if not self._mint_bucket.take(time.monotonic()):
            self.counters.rate_limited += 1
            return ApiErrorBody(ErrorCode.RATE_LIMITED, f"mint rate limit of {self.config.mint_rate:g}/s exceeded",
                                details={"retryAfter": self._mint_bucket.retry_after()})  # fmt: skip
        agent = self.agents.get(request.agent_id or request.platform_agent_id or "")
        if agent is None or (request.agent_id and agent.id != request.agent_id):
            return ApiErrorBody(ErrorCode.AGENT_NOT_FOUND, "no agent is registered under that id")
        quota = self.config.quota_calls
        if quota and self.counters.minted >= quota:
            return ApiErrorBody(ErrorCode.TENANT_QUOTA_EXCEEDED, f"the tenant's allowance of {quota} calls is spent")
        self.counters.minted += 1
        token = self.sessions.mint("", "", None, agent=agent, prefix="sess_")
        self.truth.record("minted", None, token=_tag(token.value), agentId=agent.id)
        return MintResponse(token.value, token.expires_wall)

    def redeem(
        self, session_token: str, request: RedeemRequest | None, connection_url: str
    ) -> Redemption | ApiErrorBody:
        """``POST /roleplay/session``: spend the session token, start the call, hand out its ticket.

        A blank ``drillKey`` (``request`` None) leaves the token unspent; an unknown drill spends it.
        """
        token = self.sessions.check_session(session_token, time.monotonic())
        if isinstance(token, ErrorCode):
            messages = {
                ErrorCode.INVALID_TOKEN: "unknown session token",
                ErrorCode.API_TOKEN_EXPIRED: "session token expired",
                ErrorCode.TOKEN_ALREADY_USED: "session token already used",
            }
            return ApiErrorBody(token, messages[token])
        if request is None:
            return ApiErrorBody(ErrorCode.INVALID_REQUEST, "drillKey is required")
        token.redeemed = True
        persona = self.config.persona_for(request.drill_key)
        if persona is None:
            return ApiErrorBody(ErrorCode.DRILL_NOT_FOUND, f"unknown drillKey {request.drill_key[:64]!r}")
        if self.config.unavailable_rate and self.rng.random() < self.config.unavailable_rate:
            self.truth.record("error", None, code=ErrorCode.SERVICE_UNAVAILABLE.value, token=_tag(session_token))
            return ApiErrorBody(ErrorCode.SERVICE_UNAVAILABLE, "no persona is available for this drill right now")
        call_id = CALL_ID_PREFIX + secrets.token_hex(8)
        ticket = self.tokens.mint(request.drill_key, persona, None, agent=token.agent, call_id=call_id, prefix="tkt_")
        self.counters.redeemed += 1
        self.truth.record("redeemed", call_id, token=_tag(session_token), ticket=_tag(ticket.value),
                          drillKey=request.drill_key)  # fmt: skip
        return Redemption(connection_url, ticket.value, call_id, persona, "ext_" + secrets.token_hex(8))

    # -- joining and resuming ----------------------------------------------------------------------

    async def join(self, join: Join, link: Link) -> Call | Error | None:
        """Admit a new call (after the ready latency) or refuse it. None: the client left meanwhile."""
        start = time.monotonic()
        tag = _tag(join.token)
        self.truth.record("join", None, token=tag, drillKey=join.drill_key)
        token = self.tokens.check(join.token, join.drill_key, start)
        if isinstance(token, ErrorCode):
            messages = {
                ErrorCode.TOKEN_INVALID: "unknown session token",
                ErrorCode.TOKEN_EXPIRED: "session token expired",
                ErrorCode.TOKEN_REDEEMED: "session token already used",
                ErrorCode.UNKNOWN_DRILL: f"token was minted for another drill than {join.drill_key!r}",
            }
            return self._refuse(token, messages[token], tag)
        try:
            join.audio.check()
        except ValueError as exc:
            return self._refuse(ErrorCode.BAD_AUDIO_FORMAT, str(exc), tag)
        limit = self.config.max_calls
        if limit and self.book.active + self._joining >= limit:
            return self._refuse(ErrorCode.CONCURRENCY_LIMIT, f"{limit} concurrent calls in progress", tag)
        if self.config.error_rate and self.rng.random() < self.config.error_rate:
            return self._refuse(self.config.error_code, "injected failure (--error-rate)", tag)
        token.redeemed = True
        self._joining += 1
        try:
            await asyncio.sleep(self._slowed(self.config.ready_latency))
        finally:
            self._joining -= 1
        if not link.open:
            self.truth.record("join_abandoned", None, token=tag)
            return None
        call = Call(
            self,
            call_id=token.call_id or CALL_ID_PREFIX + secrets.token_hex(8),
            resume_token=secrets.token_urlsafe(24),
            drill_key=token.drill_key,
            persona_name=token.persona_name,
            audio=join.audio,
            webhook_url=token.webhook_url,
            token_tag=tag,
            vad=EnergyVad(join.audio, self.config.vad_threshold_db, self.config.vad_hangover_ms / 1000.0),
            link=link,
        )
        call.agent = token.agent
        self.book.add(call)
        self.live.add(call)
        self.counters.joins += 1
        link.send_text(Ready(call.persona_name, call.id, call.resume_token).serialize())
        self.truth.record(
            "ready", call.id, token=tag, latency=round(call.ready_at - start, 6), drillKey=call.drill_key,
            persona=call.persona_name, active=self.book.active,
        )  # fmt: skip
        cfg = self.config
        if cfg.max_call_seconds > 0:
            call.set_timer("max_duration", cfg.max_call_seconds, lambda: self.end_call(call, "max_duration"))
        if cfg.drop_after > 0:
            call.set_timer("drop_after", cfg.drop_after, lambda: self.drop(call, "drop_after"))
        self._arm_random_drop(call)
        greeting = cfg.greeting_for(call.drill_key)
        if greeting > 0:
            delay = cfg.persona_audio_delay.sample(self.rng)
            self.truth.record(
                "persona_speaking", call.id, speaking=True, latency=None, greeting=True, audioDelay=round(delay, 6)
            )
            call.start_speaking(
                call.ready_at, greeting, PERSONA_LINES[0], greeting=True, audio_delay=delay,
                impairments=self._impairments(call, greeting),
            )  # fmt: skip
        return call

    def resume(self, resume: Resume, link: Link) -> Call | Error:
        now = time.monotonic()
        call = self.book.get(resume.call_id)
        if (
            call is None
            or call.state is CallState.ENDED
            or not hmac.compare_digest(call.resume_token.encode(), resume.resume_token.encode())
        ):
            return self._refuse(ErrorCode.UNKNOWN_CALL, "no resumable call with that id and resume token", None,
                                call_id=resume.call_id[:64])  # fmt: skip
        if call.state is CallState.READY:
            # The client saw a drop before we did (half-open connection): the new socket takes over.
            old = call.link
            self.detach(call, now, cause="takeover")
            if old is not None:
                old.abort()
        if self.config.resume_fail_rate and self.rng.random() < self.config.resume_fail_rate:
            self.truth.record("resume_failed", call.id)
            self.end_call(call, "dropped", now)
            return self._refuse(ErrorCode.UNKNOWN_CALL, "call lost by the platform (--resume-fail-rate)", None,
                                call_id=call.id)  # fmt: skip
        gap = now - call.dropped_at if call.dropped_at is not None else 0.0
        call.cancel_timer("resume_window")
        call.step(Resume)
        call.step(Reconnected)
        call.link = link
        self.live.add(call)
        self.counters.resumes += 1
        link.send_text(Reconnected(call.id).serialize())
        call.catch_up()
        self.truth.record("resume", call.id, gap=round(gap, 6))
        if call.answer_owed and call.turn is Turn.LISTENING:
            call.answer_owed = False
            call.rep_stopped_at = now  # the response latency counts from the rep's return
            self._prepare_answer(call)
        self._arm_random_drop(call)
        return call

    def _refuse(self, code: ErrorCode | str, message: str, tag: str | None, call_id: str | None = None) -> Error:
        self.counters.refused += 1
        self.truth.record("error", call_id, code=str(code), token=tag)
        return Error(code, message)

    # -- in the call -------------------------------------------------------------------------------

    def on_vad(self, call: Call, event: int, now: float) -> None:
        """The rep started (``STARTED``) or stopped (``ENDED``) speaking, per the call's VAD."""
        if event == STARTED:
            self._rep_started(call, now)
        else:
            self._rep_stopped(call, now)

    def on_text(self, call: Call, text: str | bytes) -> None:
        """A text frame during the call: hangup, or a protocol error that leaves the call going."""
        try:
            message = parse_client_message(text)
            call.step(type(message))  # only a hangup is allowed now: the table says what is not
        except RemoteProtocolError as exc:
            self._in_call_error(call, f"bad message: {exc}")
            return
        self.end_call(call, "hangup")

    def _in_call_error(self, call: Call, message: str) -> None:
        self.truth.record("error", call.id, code=ErrorCode.PROTOCOL_ERROR.value)
        if call.link is not None:
            call.link.send_text(Error(ErrorCode.PROTOCOL_ERROR, message).serialize())

    def _rep_started(self, call: Call, now: float) -> None:
        call.cancel_timer("endpoint")  # the rep went on before the platform called the turn over
        call.tell_user(True)
        self.truth.record(
            "user_speaking", call.id, speaking=True, start=round(call.vad.start - call.ready_at, 6),
            sinceSpeech=round(now - call.vad.start, 6),
        )  # fmt: skip
        if call.turn is Turn.SPEAKING:
            self._barged_in(call, now)
        elif call.turn is Turn.THINKING:
            call.cancel_timer("response")  # the rep went on: answer after this utterance instead
            call.turn = Turn.LISTENING

    def _transcribe(self, call: Call, start: float, end: float, text: str) -> None:
        """The rep's utterance into the transcript, or, as a platform under load may, dropped,
        merged into the rep's segment before it, or shifted (each a probability, more under load)."""
        cfg = self.config
        if cfg.transcript_drop or cfg.transcript_merge or cfg.transcript_shift:
            stretch = self._load_stretch()
            draw = self.rng.random()
            for fault, chance in (
                ("drop", cfg.transcript_drop), ("merge", cfg.transcript_merge), ("shift", cfg.transcript_shift)
            ):  # fmt: skip
                chance = min(1.0, chance * stretch)
                if draw < chance:
                    if fault == "drop" or (fault == "merge" and call.merge_rep_segment(end, text)):
                        self.truth.record("transcript_fault", call.id, fault=fault)
                        return
                    if fault == "shift":
                        self.truth.record("transcript_fault", call.id, fault=fault)
                        start, end = start + cfg.transcript_shift_by, end + cfg.transcript_shift_by
                    break
                draw -= chance
        call.add_segment("rep", start, end, text)

    def _barged_in(self, call: Call, now: float) -> None:
        """The rep talks over the persona: it yields (at once, or ``--barge-in-yield`` later), or,
        with probability ``--barge-in-ignore``, talks on to the end of its utterance."""
        cfg = self.config
        call.barged_at = call.vad.start
        if cfg.barge_in_ignore and self.rng.random() < cfg.barge_in_ignore:
            self.truth.record("barge_in", call.id, ignored=True)
            return
        delay = cfg.barge_in_yield.sample(self.rng)
        self.truth.record("barge_in", call.id, ignored=False, yieldDelay=round(delay, 6))
        if delay > 0:
            call.set_timer("yield", delay, lambda: call.stop_speaking(time.monotonic(), interrupted=True))
        else:
            call.stop_speaking(now, interrupted=True)

    def _rep_stopped(self, call: Call, now: float) -> None:
        vad = call.vad
        length = vad.last_end - vad.start
        self._transcribe(call, vad.start, vad.last_end, f"[rep speech {length:.2f}s]")
        delay = self.config.endpointing_delay.sample(self.rng)
        if delay > 0:  # slow endpointing: the turn is called over later (unless the rep goes on)
            call.set_timer("endpoint", delay, lambda: self._endpointed(call, length, delay, time.monotonic()))
        else:
            self._endpointed(call, length, 0.0, now)

    def _endpointed(self, call: Call, length: float, delay: float, now: float) -> None:
        """The platform calls the rep's turn over: userSpeaking false, then the answer is prepared."""
        call.timers.pop("endpoint", None)
        call.tell_user(False)
        call.rep_stopped_at = now
        self.truth.record(
            "user_speaking",
            call.id,
            speaking=False,
            utterance=round(length, 6),
            endpointingDelay=round(delay, 6),
            sinceSpeech=round(now - call.vad.last_end, 6),
        )
        if call.turn is Turn.SPEAKING:  # it talked on over the rep (a barge-in ignored): answer once done
            call.answer_owed = True
            return
        self._prepare_answer(call)

    def _prepare_answer(self, call: Call) -> None:
        call.turn = Turn.THINKING
        call.set_timer("response", self._slowed(self.config.response_latency), lambda: self._answer(call))

    def _answer(self, call: Call) -> None:
        call.timers.pop("response", None)
        if call.state is not CallState.READY or call.turn is not Turn.THINKING:
            return
        now = time.monotonic()
        # latency: from userSpeaking false (what a client times); sinceSpeech: from the rep's last audio
        latency = now - call.rep_stopped_at if call.rep_stopped_at is not None else None
        self.truth.record(
            "persona_speaking", call.id, speaking=True, latency=None if latency is None else round(latency, 6),
            sinceSpeech=round(now - call.vad.last_end, 6),
        )  # fmt: skip
        seconds = self.config.persona_utterance.sample(self.rng)
        delay = self.config.persona_audio_delay.sample(self.rng)
        if delay:
            self.truth.record("persona_audio_delay", call.id, audioDelay=round(delay, 6))
        call.start_speaking(
            now, seconds, self.rng.choice(PERSONA_LINES[1:]), greeting=False, audio_delay=delay,
            impairments=self._impairments(call, seconds),
        )  # fmt: skip

    def persona_finished(self, call: Call, now: float) -> None:
        """The pacer finished an utterance; the persona may end the call after enough answers, or
        answer the rep it talked over."""
        turns = self.config.persona_turns
        if turns and call.persona_turns >= turns:
            self.end_call(call, "persona", now)
        elif call.answer_owed:
            call.answer_owed = False
            call.rep_stopped_at = now  # the response latency counts from here: it heard the rep out
            self._prepare_answer(call)

    # -- drops and endings -------------------------------------------------------------------------

    def _arm_random_drop(self, call: Call) -> None:
        rate = self.config.drops_per_minute
        if rate > 0:
            call.set_timer("drop", self.rng.expovariate(rate / 60.0), lambda: self.drop(call, "random"))

    def drop(self, call: Call, cause: str) -> None:
        """Injected fault: kill the connection without a close frame; the call stays resumable."""
        if cause == "drop_after":
            if call.dropped_once:
                return
            call.dropped_once = True
        link = call.link
        if call.state is not CallState.READY or link is None:
            return
        self.detach(call, time.monotonic(), cause=cause)
        link.abort()

    def connection_lost(self, call: Call, clean: bool) -> None:
        """The call's client went away: a close frame ends the call, a lost connection can be resumed."""
        if clean:
            self.end_call(call, "hangup")
        else:
            self.detach(call, time.monotonic(), cause="client")

    def detach(self, call: Call, now: float, cause: str) -> None:
        if call.state is not CallState.READY:
            return
        call.step(ConnectionLost)
        call.link = None
        call.dropped_at = now
        self.live.discard(call)
        # a transient drop does not make the platform forget the rep's turn: one it was hearing,
        # ending or answering is answered once the client is back (unless the rep talks on then)
        if call.turn is Turn.THINKING or call.vad.speaking or "endpoint" in call.timers:
            call.answer_owed = True
        call.cancel_timer("endpoint")
        self._cut_turns(call, now)
        call.cancel_timer("drop")
        self.counters.drops += 1
        self.truth.record("drop", call.id, cause=cause)
        window = self.config.resume_window
        if window > 0:
            call.set_timer("resume_window", window, lambda: self.end_call(call, "dropped"))
        else:
            self.end_call(call, "dropped", now)

    def _cut_turns(self, call: Call, now: float) -> None:
        """Close whatever utterance is in flight: the rep's (to its last speech) and the persona's."""
        vad = call.vad
        if vad.reset():
            call.add_segment("rep", vad.start, vad.last_end, f"[rep speech {vad.last_end - vad.start:.2f}s]")
            call.tell_user(False)  # only if still connected (the call is ending)
        if call.turn is Turn.SPEAKING:
            call.stop_speaking(now, interrupted=True)
        call.cancel_timer("response")
        call.turn = Turn.LISTENING

    def end_call(self, call: Call, reason: str, now: float | None = None) -> None:
        if call.state is CallState.ENDED:
            return
        if now is None:
            now = time.monotonic()
        self._cut_turns(call, now)
        call.cancel_timers()
        call.step(Ended)
        call.end_reason = reason
        call.ended_at = now
        call.ended_wall = time.time()
        call.duration_sec = round(max(0.0, now - call.ready_at), 3)
        call.status = CallStatus.SCORING
        link, call.link = call.link, None
        self.live.discard(call)
        if link is not None:
            link.send_text(Ended(call.id, call.duration_sec, reason).serialize())
            link.close(1000)
        self.book.ended(call)
        self.truth.record("ended", call.id, reason=reason, durationSec=call.duration_sec)
        self.scorer.submit(call)

    # -- housekeeping ------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        last_evict = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for call in [c for c in self.live if c.vad.stalled(now, STALL_GRACE)]:
                call.vad.reset()
                self._rep_stopped(call, now)
            if now - last_evict >= EVICT_INTERVAL:
                last_evict = now
                self.tokens.evict(now)
                self.sessions.evict(now)
                self.book.evict(now)
