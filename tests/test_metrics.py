"""The bounded histogram's accuracy, merge and difference; the declared instruments; and the
metrics object's exposition and deltas."""

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from athos_load.histogram import LogHistogram
from athos_load.metrics import BUCKETS, Counter, Histogram, Metrics, Outcome, ScoreOutcome, Series, Timing

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


def test_since_is_what_was_recorded_after_a_copy():
    earlier_values = DISTRIBUTIONS["lognormal"][:3000]
    later_values = np.linspace(earlier_values.min() * 1.5, earlier_values.max() * 2, 2000)  # a new max only
    running = LogHistogram()
    running.record_many(earlier_values)
    snapshot = running.copy()
    running.record_many(later_values)
    assert snapshot.count == 3000  # a copy does not follow the original
    window, alone = running.since(snapshot), LogHistogram()
    alone.record_many(later_values)
    assert np.array_equal(window.counts, alone.counts) and window.count == alone.count
    assert window.sum == pytest.approx(alone.sum)
    for q in (50, 95, 99):
        assert window.percentile(q) == pytest.approx(alone.percentile(q), rel=0.001)
    # the extremes: exact where the later values moved them, else within the accuracy
    assert window.max == running.max == alone.max
    assert window.min == pytest.approx(alone.min, rel=0.001) and window.min >= running.min


def test_since_an_unrelated_histogram_is_an_error():
    one, other = LogHistogram(), LogHistogram()
    one.record(0.2)
    other.record(0.5)
    with pytest.raises(ValueError, match="not an earlier copy"):
        one.since(other)
    empty = one.since(one.copy())
    assert empty.count == 0 and empty.percentile(50) is None and empty.summary()["max"] is None


def exposition(metrics: Metrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def record_some(m: Metrics, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for v in rng.lognormal(-1, 0.5, 300):
        m.timings[Timing.CONNECT_READY].observe(float(v), scenario="a" if v < 0.4 else "b")
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
    m.timings[Timing.TOKEN_MINT].observe(0.05, scenario="a")
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
        "lost": 0,
        "scored": 1,
        "score_missing": 0,
        "score_pending": 0,
        "score_failed": 0,
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


def test_a_misspelt_name_is_an_error_not_a_lost_series():
    m = Metrics()
    before = exposition(m)
    with pytest.raises(KeyError, match="athos_scores_mising"):
        m.total("athos_scores_mising")
    with pytest.raises(KeyError, match="conect_ready"):
        m.histogram("conect_ready")
    with pytest.raises(KeyError, match="conect_ready"):
        m.timing("conect_ready")
    assert exposition(m) == before


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (lambda m: m.setup_failed.inc(scenaro="a"), r"labels \['scenaro'\] given, \['scenario'\] declared"),
        (lambda m: m.setup_failed.inc(), r"labels \[\] given"),
        (lambda m: m.sessions.inc(scenario="a"), r"labels \['scenario'\] given, \['scenario', 'outcome'\]"),
        (lambda m: m.sessions.inc(scenario="a", outcome="complete"), "outcome='complete' is not one of"),
        (lambda m: m.errors.inc(code="brand_new_code"), "code='brand_new_code' is not one of"),
        (lambda m: m.timings[Timing.CONNECT_READY].observe(0.1, scenario="a", code="x"), "labels"),
        (lambda m: m.timings[Timing.CONNECT_READY].observe(0.1), r"labels \[\] given, \['scenario'\] declared"),
        (lambda m: m.audio_send_lag.observe(0.1, scenario="a"), r"labels \['scenario'\] given, \[\] declared"),
        (lambda m: m.total("athos_sessions", outcom="failed"), r"no label \['outcom'\]"),
        (lambda m: m.total("athos_sessions", outcome="fialed"), "outcome='fialed' is not one of"),
        (lambda m: m.loop_lag.observe(0.1), "labels"),
        (lambda m: m.session_seconds.inc(-1.0, scenario="a"), "only goes up"),
    ],
)
def test_a_wrong_or_missing_label_is_an_error_and_records_nothing(record, message):
    m = Metrics()
    m.declare(["a"])
    before = exposition(m)
    with pytest.raises(ValueError, match=message):
        record(m)
    assert exposition(m) == before and not any(w.counters or w.timings for _, w in m.timeline)


def test_instruments_are_declared_once_with_valid_names_and_labels():
    m = Metrics()
    with pytest.raises(ValueError, match="athos_errors is declared twice"):
        m.add(Counter("athos_errors", "again", ("code",)))
    with pytest.raises(ValueError, match="connect_ready is declared twice"):
        m.add(Histogram("athos_connect_again_seconds", "again", short_name="connect_ready", bounds=(1.0,)))
    with pytest.raises(ValueError, match="not a valid Prometheus name"):
        Counter("athos-errors", "dashes", ())
    with pytest.raises(ValueError, match="allowed values for labels it does not have"):
        Counter("athos_x", "x", ("scenario",), allowed={"outcome": Outcome})
    with pytest.raises(ValueError, match="at most one label"):
        Histogram("athos_x_seconds", "x", ("scenario", "code"), short_name="x", bounds=(1.0,))
    # every family /metrics shows is a declared instrument or one of the levels read at scrape time
    names = {family.name for family in text_string_to_metric_families(generate_latest(m.registry).decode())}
    levels = {"athos_sessions_active", "athos_loadgen_users", "athos_loadgen_cpu_seconds"}
    levels |= {"athos_loadgen_memory_bytes", "athos_loadgen_open_fds", "athos_loadgen_saturated"}
    declared = {name.removesuffix("_total") for name in m.instruments}
    assert names - levels == declared


def test_a_delta_this_version_cannot_read_is_an_error_and_adds_nothing():
    worker, master = Metrics(), Metrics(source="master")
    record_some(worker, 4)
    delta = worker.take_delta()
    good = master.summary()
    for bad in (
        {**delta, "counters": [*delta["counters"], ["athos_scores_mising", ["a"], 1]]},
        {**delta, "counters": [*delta["counters"], ["athos_sessions", ["a"], 1]]},
        {**delta, "series": [*delta["series"], ["conect_ready", "a", delta["series"][0][2]]]},
    ):
        with pytest.raises((KeyError, ValueError)):
            master.merge(bad, "w0")
        assert master.summary() == good  # checked first, so nothing of it was added
    master.merge(delta, "w0")
    assert master.summary()["calls"]["started"] == 5


def test_counters_read_by_name_and_label():
    m = Metrics()
    record_some(m, 5)
    assert m.total("athos_sessions", outcome=Outcome.FAILED) == m.sessions.total(outcome="failed") == 1
    assert m.total("athos_sessions", scenario="a") == 2 and m.total("athos_sessions", scenario="b") == 0
    assert m.counters[("athos_errors", ("other",))] == 1  # the snapshot by name and label values


def test_batched_observations_equal_one_at_a_time():
    values = [0.0, 0.001, 0.0015, 0.02, 0.02000001, 0.5, 3.0]  # on, just past and between bounds
    one, batch = Series(BUCKETS["audio_send_lag"]), Series(BUCKETS["audio_send_lag"])
    for v in values:
        one.observe(v)
    batch.observe_many(values)
    assert one.buckets.tolist() == batch.buckets.tolist()
    assert np.array_equal(one.log.counts, batch.log.counts) and one.log.count == batch.log.count
