"""Transcript fidelity: did the platform hear the rep as the rep spoke?

After a call is scored, its diarized transcript (``GET /v1/calls/:id``, segments in seconds since
``ready``) is held against what the rep said, which the tool knows exactly: each spoken turn's
speech bounds (from its clip, where the tool started it) and, when the scenario gives it, its
``text``.

* every spoken turn must have a rep segment, in order: a turn no rep segment overlaps (within
  the tolerance) is **missing**;
* a found turn whose segment starts or ends more than the tolerance away from its speech is
  **misaligned** (a segment that merges two turns is found for both, and misaligned for both);
* when the platform returns words, the word error rate of the call's rep text against the
  scenario's, over the whole call (so a turn split in two or merged with the next costs nothing
  by itself), by ``jiwer`` (Levenshtein alignment of words, lower-cased, without punctuation).
  Bracketed annotations (``[inaudible]``, the simulator's ``[rep speech 1.20s]``) are not words.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .wire import Segment

TOLERANCE = 0.3  # seconds a rep segment's bounds may be off the speech's before it is misaligned
_ANNOTATION = re.compile(r"\[[^\]]*\]")


@functools.cache
def _words() -> Any:
    """Words as the WER counts them. jiwer is imported when a transcript is first checked, not in
    every process that imports this module (it is a heavy import for a worker that never checks)."""
    import jiwer

    return jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )


@dataclass(frozen=True, slots=True)
class SpokenTurn:
    """What the rep said in one turn: its speech bounds in seconds since ``ready``, and its words."""

    start: float
    end: float
    text: str | None = None


@dataclass(frozen=True, slots=True)
class TranscriptCheck:
    """One call's transcript against what the rep said."""

    turns: int
    missing: int
    misaligned: int
    words: int = 0  # reference words, when the platform returned words to compare with
    word_errors: int = 0  # substitutions + deletions + insertions

    @property
    def wer(self) -> float | None:
        return self.word_errors / self.words if self.words else None


def words_of(text: str) -> str:
    """A transcript's text without bracketed annotations."""
    return _ANNOTATION.sub(" ", text).strip()


def check(spoken: Sequence[SpokenTurn], segments: Sequence[Segment], tolerance: float = TOLERANCE) -> TranscriptCheck:
    """``spoken`` (in the order said) against a call's transcript ``segments``."""
    rep = sorted((s for s in segments if s.speaker == "rep"), key=lambda s: s.start)
    missing = misaligned = 0
    at = 0  # segments before this one belong to earlier turns (a merged segment may serve the next)
    for turn in spoken:
        found = next(
            (
                i
                for i in range(at, len(rep))
                if rep[i].start <= turn.end + tolerance and rep[i].end >= turn.start - tolerance
            ),
            None,
        )
        if found is None:
            missing += 1
            continue
        at = found
        segment = rep[found]
        if abs(segment.start - turn.start) > tolerance or abs(segment.end - turn.end) > tolerance:
            misaligned += 1
    words = word_errors = 0
    reference = " ".join(t.text for t in spoken if t.text)
    hypothesis = " ".join(words_of(s.text) for s in rep)
    if reference.strip() and hypothesis.strip():  # the platform returned words: compare them
        import jiwer

        words = _words()
        out = jiwer.process_words(reference, hypothesis, reference_transform=words, hypothesis_transform=words)
        words = out.hits + out.substitutions + out.deletions
        word_errors = out.substitutions + out.deletions + out.insertions
    return TranscriptCheck(len(spoken), missing, misaligned, words, word_errors)
