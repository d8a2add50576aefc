"""Call state on the platform side, and the book of calls that the REST endpoints read.

A :class:`Call` holds what one call is (ids, audio format, connection, transcript, status) and the
persona's part of the conversation; the decisions that span calls (joins, drops, ending, scoring)
are made by the platform that holds the call (:class:`CallHost`: the simulator's ``Platform``), to
which every call points back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from athos_load.wire import AudioFormat, CallRecord, CallState, CallStatus, Role, Segment, Speaker, Speaking, advance
from athos_load.wire.pacing import Schedule

from .connection import Link, persona_wire_frames
from .pacer import Pacer
from .tokens import SimAgent
from .truth import TruthLog
from .vad import EnergyVad


class CallHost(Protocol):
    """What a call asks of the platform holding it (so this module needs no import of it)."""

    pacer: Pacer
    truth: TruthLog

    def persona_finished(self, call: Call, now: float) -> None: ...


class Turn(enum.Enum):
    """The persona's side of the turn-taking."""

    LISTENING = "listening"  # waiting for the rep to say something
    THINKING = "thinking"  # the rep stopped; an answer is scheduled
    SPEAKING = "speaking"  # streaming audio through the pacer


PERSONA_LINES = (
    "Thanks for calling. What is this about?",
    "We already work with a vendor for that, honestly.",
    "How is that different from what we have today?",
    "What would something like this cost us per seat?",
    "I'd need to bring our finance lead into this conversation.",
    "Can you send me a case study from a company our size?",
    "Timing is tricky for us; budgets are set for the year.",
    "Okay, that's interesting. Tell me more about the rollout.",
)


class Impairments:
    """What goes wrong in one persona utterance's audio stream: ``gaps`` (frame index -> seconds
    the stream stalls before that frame: the rest of the utterance comes that much later) and
    ``jitter`` (a draw of extra lateness per frame, the schedule unmoved: a late frame, then a
    bunch). ``taken`` keeps the gaps that happened, for the truth log."""

    __slots__ = ("gaps", "jitter", "taken", "_held")

    def __init__(self, gaps: dict[int, float], jitter: Callable[[], float] | None) -> None:
        self.gaps = gaps
        self.jitter = jitter
        self.taken: list[float] = []
        self._held = -1

    def hold(self, k: int, sp: Schedule, now: float) -> float | None:
        """Frame ``k`` is due at ``now``: when to send it instead, or None to send it now."""
        gap = self.gaps.pop(k, None)
        if gap is not None:
            sp.start += gap  # frame k and everything after it: later by the gap
            self.taken.append(gap)
            if sp.deadline(k) > now:
                return sp.deadline(k)
        if self.jitter is not None and k != self._held:
            late = sp.deadline(k) + self.jitter()
            if late > now:
                self._held = k
                return late
        return None


class Call:
    """One call, from ``ready`` until it is scored (then kept for queries until evicted)."""

    __slots__ = (
        "platform", "id", "resume_token", "drill_key", "persona_name", "audio", "webhook_url", "token_tag",
        "ready_at", "ready_wall", "state", "link", "vad", "turn", "status", "seq", "transcript",
        "rep_talk", "persona_talk", "persona_turns", "rep_stopped_at", "dropped_at", "dropped_once",
        "end_reason", "ended_at", "ended_wall", "duration_sec", "score", "scored_wall", "timers",
        "told_user", "told_persona", "pacer_slot", "answer_owed", "barged_at", "agent", "failure",
        "_frames", "_frame_s", "_sp", "_sp_total", "_sp_line", "_sp_greeting", "_sp_began", "_sp_imp",
    )  # fmt: skip

    def __init__(
        self,
        platform: CallHost,
        *,
        call_id: str,
        resume_token: str,
        drill_key: str,
        persona_name: str,
        audio: AudioFormat,
        webhook_url: str | None,
        token_tag: str,
        vad: EnergyVad,
        link: Link,
    ) -> None:
        self.platform = platform
        self.id = call_id
        self.resume_token = resume_token
        self.drill_key = drill_key
        self.persona_name = persona_name
        self.audio = audio
        self.webhook_url = webhook_url
        self.token_tag = token_tag  # a token prefix, to join minted/join lines with this call in the truth log
        self.ready_at = time.monotonic()
        self.ready_wall = time.time()
        # the server's side of the wire's lifecycle table: ready (a client is connected),
        # reconnecting (dropped, resumable until the resume window closes), hanging_up, ended
        self.state = CallState.READY
        self.link: Link | None = link
        self.vad = vad
        self.turn = Turn.LISTENING
        self.status = CallStatus.IN_PROGRESS
        self.seq = 0
        self.transcript: list[Segment] = []
        self.rep_talk = 0.0
        self.persona_talk = 0.0
        self.persona_turns = 0  # answers finished (the greeting is not one)
        self.rep_stopped_at: float | None = None
        self.answer_owed = False  # the rep's turn ended while the persona talked on: answer after it
        self.barged_at: float | None = None  # the rep started talking over the persona's utterance (VAD start)
        self.dropped_at: float | None = None
        self.dropped_once = False
        self.end_reason: str | None = None
        self.ended_at: float | None = None
        self.ended_wall: float | None = None
        self.duration_sec: float | None = None
        self.score: float | None = None
        self.scored_wall: float | None = None
        self.agent: SimAgent | None = None  # the registered rep the session token was minted for
        self.failure: str | None = None  # why scoring failed (call.scored success false)
        # named one-shot timers (loop.call_later handles): response, max_duration, drop, resume_window
        self.timers: dict[str, asyncio.TimerHandle] = {}
        # what the client last heard: every speaking=true it got is followed by a false, even when
        # the turn ended while it was disconnected (then the false comes right after reconnected)
        self.told_user = False
        self.told_persona = False
        self.pacer_slot = -1
        self._frames = persona_wire_frames(audio)
        self._frame_s = audio.frame_seconds
        self._sp = Schedule(0.0, self._frame_s)  # the persona utterance's frames, paced in real time
        self._sp_total = 0
        self._sp_line = ""
        self._sp_greeting = False
        self._sp_began = 0.0  # when the utterance's audio began (its transcript segment's start)
        self._sp_imp: Impairments | None = None  # what goes wrong in its audio (None: nothing)

    # -- timers ------------------------------------------------------------------------------------

    def set_timer(self, name: str, delay: float, callback: object) -> None:
        self.cancel_timer(name)
        self.timers[name] = asyncio.get_running_loop().call_later(delay, callback)  # type: ignore[arg-type]

    def cancel_timer(self, name: str) -> None:
        handle = self.timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def cancel_timers(self) -> None:
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()

    # -- speaking events ---------------------------------------------------------------------------

    def step(self, happening: type) -> None:
        """Move along the wire's lifecycle table (server side); a step it forbids raises ProtocolError."""
        self.state = advance(self.state, happening, Role.SERVER)

    def tell_user(self, speaking: bool) -> None:
        if self.link is not None and self.told_user != speaking:
            self.link.send_text(Speaking(Speaker.USER, speaking).serialize())
            self.told_user = speaking

    def tell_persona(self, speaking: bool) -> None:
        if self.link is not None and self.told_persona != speaking:
            self.link.send_text(Speaking(Speaker.PERSONA, speaking).serialize())
            self.told_persona = speaking

    def catch_up(self) -> None:
        """After a resume: close the speaking states that ended while the client was away."""
        if not self.vad.speaking:
            self.tell_user(False)
        if self.turn is not Turn.SPEAKING:
            self.tell_persona(False)

    # -- the persona speaking ----------------------------------------------------------------------

    def start_speaking(
        self,
        now: float,
        seconds: float,
        line: str,
        greeting: bool,
        audio_delay: float = 0.0,
        impairments: Impairments | None = None,
    ) -> None:
        """Announce personaSpeaking and send the first frame (``audio_delay`` later: a platform that
        announces speech before it has the audio); the pacer sends the rest on time, but for the
        ``impairments`` (gaps and jitter in the stream)."""
        assert self.link is not None
        self.turn = Turn.SPEAKING
        self._sp = Schedule(now + audio_delay, self._frame_s)
        self._sp_began = now + audio_delay
        self._sp_imp = impairments
        self._sp_total = max(1, round(seconds / self._frame_s))
        self._sp_line = line
        self._sp_greeting = greeting
        self.tell_persona(True)
        due = self.pace(now)
        if due is not None:
            self.platform.pacer.schedule(self, due)

    def pace(self, now: float) -> float | None:
        """The pacer's hook: send the frames due by ``now``; the next deadline, or None when done."""
        if self.turn is not Turn.SPEAKING or self.link is None:
            return None
        frames, sp, total = self._frames, self._sp, self._sp_total
        loop_len = len(frames)
        send = self.link.send_audio
        imp = self._sp_imp
        for k in sp.take(now):  # what is due, late frames at once (wire.pacing's rule)
            if k >= total:
                sp.next = total
                break
            if imp is not None:
                hold = imp.hold(k, sp, now)
                if hold is not None:  # frame k (and what follows) waits: a gap, or a late frame
                    sp.next = k
                    return hold
            send(frames[k % loop_len])
            if k == 0:  # its first frame (every frame of the voice has sound): what a rep first hears
                self.platform.truth.record("persona_audio", self.id, greeting=self._sp_greeting)
        if sp.next < total:
            return sp.next_deadline
        end = sp.deadline(total)  # the last frame has played out at the client
        if end > now:
            return end
        self.stop_speaking(end, interrupted=False)
        self.platform.persona_finished(self, end)
        return None

    def stop_speaking(self, now: float, interrupted: bool) -> None:
        """End the persona's utterance (finished, barged in on, or cut by the call ending)."""
        if self.turn is not Turn.SPEAKING:
            return
        self.turn = Turn.LISTENING
        self.cancel_timer("yield")  # a late yield to a barge-in must not cut the next utterance
        self.platform.pacer.cancel(self)
        self.tell_persona(False)
        start = self._sp_began
        end = min(now, self._sp.deadline(self._sp_total))
        text = self._sp_line + (" [interrupted]" if interrupted else "")
        self.add_segment("persona", start, end, text)
        gaps = [round(g, 6) for g in self._sp_imp.taken] if self._sp_imp is not None else []
        self.platform.truth.record(
            "persona_speaking", self.id, speaking=False, interrupted=interrupted, greeting=self._sp_greeting,
            utterance=round(end - start, 6), gaps=gaps,
            **self._barge_in_truth(),
        )  # fmt: skip
        if not self._sp_greeting and not interrupted:
            self.persona_turns += 1

    def _barge_in_truth(self) -> dict[str, float]:
        """How long the persona talked on over the rep (yielding, or finishing anyway): the truth
        of a client's barge-in timing, from the rep's first speech frame to this stop."""
        barged_at, self.barged_at = self.barged_at, None
        return {} if barged_at is None else {"sinceSpeech": round(time.monotonic() - barged_at, 6)}

    # -- transcript and record ---------------------------------------------------------------------

    def add_segment(self, speaker: str, start: float, end: float, text: str) -> None:
        """A transcript segment from monotonic times; stored in seconds since ready."""
        if end <= start:
            return
        if speaker == "rep":
            self.rep_talk += end - start
        else:
            self.persona_talk += end - start
        base = self.ready_at
        self.transcript.append(Segment(speaker, round(start - base, 3), round(end - base, 3), text))

    def merge_rep_segment(self, end: float, text: str) -> bool:
        """Extend the rep's latest segment to ``end`` (a transcript merging two utterances); False
        when there is none to merge into."""
        for i in range(len(self.transcript) - 1, -1, -1):
            segment = self.transcript[i]
            if segment.speaker == "rep":
                new_end = round(end - self.ready_at, 3)
                self.rep_talk += max(0.0, new_end - segment.end)
                self.transcript[i] = dataclasses.replace(segment, end=new_end, text=f"{segment.text} {text}")
                return True
        return False

    def record(self, with_transcript: bool = True) -> CallRecord:
        transcript = tuple(sorted(self.transcript, key=lambda s: s.start)) if with_transcript else ()
        agent = self.agent
        return CallRecord(
            id=self.id,
            status=self.status,
            drill_key=self.drill_key,
            duration_sec=self.duration_sec,
            score=self.score,
            ended_at=self.ended_wall,
            scored_at=self.scored_wall,
            transcript=transcript,
            started_at=self.ready_wall,
            agent_id=agent.id if agent else "",
            agency_id=agent.agency_id if agent else "",
            platform_agent_id=agent.platform_agent_id if agent else None,
            summary="The rep's share of the talk time, against the ideal share." if self.score is not None else "",
        )


class CallBook:
    """Every call the REST API can see: ``GET /calls/:id`` reads one, ``GET /calls`` pages through
    the scored ones. Scored calls are kept for ``retention`` seconds and at most ``max_retained``.

    The list pages as the contract says: newest ``endedAt`` first, filtered on ``endedAt`` (not on
    when the call was scored), an opaque cursor naming the last row of the page (keyset paging:
    the next page starts after it). So a call scored after a poller paged past its ``endedAt``
    is not on the pages it reads next: only a re-scan of the window finds it.
    """

    def __init__(self, retention: float, max_retained: int) -> None:
        self._retention = retention
        self._max_retained = max_retained
        self._calls: dict[str, Call] = {}
        self._scored: OrderedDict[str, float] = OrderedDict()  # id -> monotonic time it was scored
        self.active = 0  # calls not ended (connected or awaiting resume)
        self.total = 0

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def add(self, call: Call) -> None:
        self._calls[call.id] = call
        self.active += 1
        self.total += 1

    def ended(self, call: Call) -> None:
        self.active -= 1

    def scored(self, call: Call, now: float) -> None:
        """The call reached its outcome (scored, or scoring failed: kept, never listed)."""
        self._scored[call.id] = now
        while len(self._scored) > self._max_retained:
            self._forget(self._scored.popitem(last=False)[0])

    def page(
        self, since: float, until: float | None, after: tuple[float, str] | None, limit: int,
        agent: Callable[[Call], bool] | None = None,
    ) -> tuple[list[CallRecord], tuple[float, str] | None]:  # fmt: skip
        """Scored calls that ended in [since, until], newest first, after the key ``after``; and
        the key of the page's last row when more follow (None: the last page)."""
        rows = []
        for call_id in self._scored:
            call = self._calls.get(call_id)
            if call is None or call.status is not CallStatus.SCORED or call.ended_wall is None:
                continue
            if call.ended_wall < since or (until is not None and call.ended_wall > until):
                continue
            key = (call.ended_wall, call.id)
            if (after is not None and key >= after) or (agent is not None and not agent(call)):
                continue
            rows.append((key, call))
        rows.sort(key=lambda row: row[0], reverse=True)
        page = rows[:limit]
        more = len(rows) > limit
        return [call.record(with_transcript=False) for _, call in page], (page[-1][0] if more else None)

    def evict(self, now: float) -> None:
        """Forget scored calls older than the retention."""
        scored = self._scored
        while scored:
            call_id, at = next(iter(scored.items()))
            if now - at < self._retention:
                break
            del scored[call_id]
            self._forget(call_id)

    def _forget(self, call_id: str) -> None:
        self._calls.pop(call_id, None)
