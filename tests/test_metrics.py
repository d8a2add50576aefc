"""The bounded histogram's accuracy and merge, and the metrics object's exposition and deltas."""

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from athos_load.histogram import LogHistogram
from athos_load.metrics import Metrics, Outcome, ScoreOutcome, Timing

RNG = np.random.default_rng(20261125)
DISTRIBUTIONS = {
    "lognormal": RNG.lognormal(-1.0, 0.8, 200_000),
    "exponential": RNG.exponential(0.4, 200_000),
    "bimodal": np.concatenate([RNG.normal(0.2, 0.02, 100_000), RNG.normal(3.0, 0.5, 100_000)]).clip(1e-3),
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_percentiles_within_one_percent_of_numpy(name):
    values = DISTRIBUTIONS[name]
    hist = LogHistogram()
    hist.record_many(values)
    for q in (1, 10, 50, 90, 95, 99, 99.9):
        exact = np.percentile(values, q)
        assert hist.percentile(q) == pytest.approx(exact, rel=0.001), q
    assert (hist.count, hist.min, hist.max) == (values.size, values.min(), values.max())


def test_one_at_a_time_equals_batch():
    values = DISTRIBUTIONS["lognormal"][:5000]
    one, batch = LogHistogram(), LogHistogram()
    for v in values:
        one.record(float(v))
    batch.record_many(values)
    assert np.array_equal(one.counts, batch.counts) and one.sum == pytest.approx(batch.sum)


def test_merge_is_exact_and_survives_transport():
    values = DISTRIBUTIONS["exponential"]
    whole = LogHistogram()
    whole.record_many(values)
    merged = LogHistogram()
    for part in np.array_split(values, 7):
        piece = LogHistogram()
        piece.record_many(part)
        merged.merge(LogHistogram.from_dict(piece.to_dict()))
    assert np.array_equal(merged.counts, whole.counts)
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)
    assert merged.percentile(99) == whole.percentile(99)


def test_memory_does_not_grow_with_samples():
    hist = LogHistogram()
    size = hist.counts.nbytes
    hist.record_many(RNG.lognormal(0, 3, 1_000_000))  # a million calls, spread over decades
    assert hist.counts.nbytes == size < 128 * 1024  # ~92 KiB, whatever the number of calls
    assert LogHistogram().percentile(50) is None


def test_out_of_range_values_are_clamped_not_lost():
    hist = LogHistogram()
    for v in (0.0, 1e-9, 1e7):
        hist.record(v)
    assert hist.count == 3 and hist.percentile(100) == 1e7 and hist.percentile(0) == 0.0


def exposition(metrics: Metrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def record_some(m: Metrics, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for v in rng.lognormal(-1, 0.5, 300):
        m.observe(Timing.CONNECT_READY, float(v), "a" if v < 0.4 else "b")
    for _ in range(5):
        m.call_started("a")
    m.call_finished("a", Outcome.COMPLETED, connected_seconds=90.0)
    m.call_finished("a", Outcome.FAILED, connected_seconds=30.0)
    m.score_settled("a", ScoreOutcome.SCORED)
    m.error("concurrency_limit")
    m.error("brand_new_code")
    m.reconnect("a")
    m.audio_send_lags([0.003, 0.001])


def test_exposition_names_labels_and_buckets():
    m = Metrics()
    record_some(m, 1)
    text = generate_latest(m.registry).decode()
    assert "_created" not in text
    values = exposition(m)
    assert values[("athos_errors_total", (("code", "other"),))] == 1  # an unknown code cannot add a label
    assert values[("athos_errors_total", (("code", "token_expired"),))] == 0  # known codes exist at zero
    assert values[("athos_sessions_active", (("scenario", "a"),))] == 3
    count = sum(v for (n, _), v in values.items() if n == "athos_connect_ready_seconds_count")
    assert count == 300 == m.timing(Timing.CONNECT_READY).count
    # le buckets are cumulative, and a value equal to a bound falls in that bound's bucket
    m.observe(Timing.TOKEN_MINT, 0.05, "a")
    values = exposition(m)
    assert values[("athos_token_mint_seconds_bucket", (("le", "0.05"), ("scenario", "a")))] == 1
    assert values[("athos_token_mint_seconds_bucket", (("le", "0.025"), ("scenario", "a")))] == 0


def test_worker_deltas_merge_to_the_single_process_totals():
    single = Metrics()
    record_some(single, 1)
    record_some(single, 2)
    master = Metrics(source="master")
    for index, seed in enumerate((1, 2)):
        worker = Metrics()
        record_some(worker, seed)
        half = worker.take_delta()  # a periodic report, then a final one with nothing new
        master.merge(half, f"w{index}")
        master.merge(worker.take_delta(), f"w{index}")
    assert master.summary() == single.summary()
    ex_single, ex_master = exposition(single), exposition(master)
    for key, value in ex_single.items():
        if key[0].startswith(("athos_connect_ready", "athos_sessions", "athos_errors", "athos_audio")):
            assert ex_master[key] == pytest.approx(value), key


def test_declared_scenarios_exist_at_zero():
    m = Metrics()
    m.declare(["quick"])
    values = exposition(m)
    for name in (
        "athos_reconnects_total",
        "athos_scores_missing_total",
        "athos_scores_total",
        "athos_scores_pending_total",
        "athos_session_seconds_total",
    ):
        assert values[(name, (("scenario", "quick"),))] == 0
    assert values[("athos_sessions_total", (("outcome", "aborted"), ("scenario", "quick")))] == 0
    assert values[("athos_reconnect_seconds_bucket", (("le", "+Inf"), ("scenario", "quick")))] == 0
    assert m.take_delta()["series"] == []  # nothing recorded: nothing to send


def test_summary_accounts_for_every_call():
    m = Metrics()
    record_some(m, 3)
    summary = m.summary()
    assert summary["calls"] == {
        "started": 5,
        "completed": 1,
        "failed": 1,
        "aborted": 0,
        "scored": 1,
        "score_missing": 0,
        "score_pending": 0,
    }
    # one reconnect in two minutes of connected calls
    assert summary["reconnects_per_session_minute"] == 0.5 and summary["session_minutes"] == 2.0


def test_a_pending_score_is_not_a_missing_one():
    m = Metrics()
    m.declare(["a"])
    m.call_started("a")
    m.call_finished("a", Outcome.COMPLETED, connected_seconds=10.0)
    m.score_settled("a", ScoreOutcome.PENDING)
    calls = m.summary()["calls"]
    assert calls["completed"] == calls["scored"] + calls["score_missing"] + calls["score_pending"] == 1
    assert calls["score_pending"] == 1 and calls["score_missing"] == 0
    values = exposition(m)
    assert values[("athos_scores_pending_total", (("scenario", "a"),))] == 1
    assert values[("athos_scores_missing_total", (("scenario", "a"),))] == 0
    assert values[("athos_session_seconds_total", (("scenario", "a"),))] == 10.0


def test_a_misspelt_counter_is_an_error_not_a_lost_series():
    with pytest.raises(KeyError, match="athos_scores_mising"):
        Metrics().count("athos_scores_mising", "a")


def test_batched_observations_equal_one_at_a_time():
    from athos_load.metrics import BUCKETS, Series

    values = [0.0, 0.001, 0.0015, 0.02, 0.02000001, 0.5, 3.0]  # on, just past and between bounds
    one, batch = Series(BUCKETS["audio_send_lag"]), Series(BUCKETS["audio_send_lag"])
    for v in values:
        one.observe(v)
    batch.observe_many(values)
    assert one.buckets.tolist() == batch.buckets.tolist()
    assert np.array_equal(one.log.counts, batch.log.counts) and one.log.count == batch.log.count
