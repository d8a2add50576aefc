"""One declaration per timing (metrics.TIMINGS): the metrics, buckets, help texts, Locust entries,
call steps and gate names all come from it, so a timing added there is everywhere at once."""

from __future__ import annotations

from athos_load.call import REQUEST_TYPES, TIMED_STEPS
from athos_load.conversation import Step
from athos_load.gates import FILTERS
from athos_load.gates import TIMINGS as GATED
from athos_load.metrics import BUCKETS, DOCS, TIMINGS, Metrics, Timing


def test_every_timing_is_declared_once_and_everything_else_follows():
    assert set(TIMINGS) == set(Timing)
    assert {t: DOCS[t] for t in Timing} == {t: spec.doc for t, spec in TIMINGS.items()}
    metrics = Metrics()
    for timing, spec in TIMINGS.items():
        assert BUCKETS[timing] == spec.buckets and list(spec.buckets) == sorted(spec.buckets)
        assert metrics.timings[timing].name == f"athos_{timing.value}_seconds"
        assert timing.value in GATED and timing.value in FILTERS["scenario"]
        if spec.request_type is not None:  # a Locust entry: a call step of the same name
            step = Step(timing.value)
            assert TIMED_STEPS[step] is timing and REQUEST_TYPES[step] == spec.request_type
    assert set(REQUEST_TYPES) == {*TIMED_STEPS, Step.CALL}
