"""Load shapes: the users each shape asks for over time, and the capacity search's verdict."""

from types import SimpleNamespace

import pytest

from athos_load.histogram import LogHistogram
from athos_load.metrics import Metrics, Timing
from athos_load.plugin.shapes import AthosShape, CapacitySearch, Gate, parse_params


def shape_at(name: str, params: str, users: int = 50, rate: float = 5.0, run_time: int | None = None) -> AthosShape:
    shape = AthosShape()
    options = SimpleNamespace(
        athos_shape=name, athos_shape_params=params, num_users=users, spawn_rate=rate, run_time=run_time
    )
    athos = SimpleNamespace(metrics=Metrics())
    shape.runner = SimpleNamespace(environment=SimpleNamespace(parsed_options=options, athos=athos))
    return shape


def ticks(shape: AthosShape, times: list[float]) -> list:
    out = []
    for t in times:
        shape.get_run_time = lambda t=t: t
        out.append(shape.tick())
    return out


def test_ramp_is_locusts_own_options():
    assert ticks(shape_at("", ""), [0, 1000]) == [(50, 5.0), (50, 5.0)]
    assert ticks(shape_at("", "", run_time=20), [19.9, 20]) == [(50, 5.0), None]
    assert ticks(shape_at("steps", "", run_time=20), [20]) == [None]  # -t cuts every shape short


def test_steps_then_stop():
    shape = shape_at("steps", "start=5,step=10,step_seconds=30,steps=3")
    assert ticks(shape, [0, 29, 30, 61, 90]) == [(5, 5.0), (5, 5.0), (15, 5.0), (25, 5.0), None]


def test_spike_jumps_at_once_and_recovers():
    shape = shape_at("spike", "base=10,peak=200,at=60,hold=30,recover=60")
    assert ticks(shape, [0, 60, 89, 90, 149, 150]) == [
        (10, 5.0),
        (200, 200),
        (200, 200),
        (10, 200),
        (10, 200),
        None,
    ]


def test_soak_ramps_over_its_ramp_time_and_holds():
    shape = shape_at("soak", "ramp_seconds=100,hold_seconds=3600", users=200)
    assert ticks(shape, [0, 3700, 3701]) == [(200, 2.0), (200, 2.0), None]


def test_soak_wave_goes_between_its_two_levels_over_its_period():
    shape = shape_at("soak", "ramp_seconds=100,low=50,period=3600", users=250, rate=1.0)
    users = [u for u, _ in ticks(shape, [50, 100, 100 + 900, 100 + 1800, 100 + 2700, 100 + 3600])]
    assert users == [250, 250, 150, 50, 150, 250]
    assert ticks(shape, [1000])[0][1] == 2.5  # the ramp's rate, 250 users / 100 s: steeper than the wave
    # a fast wave: Locust may change the count as fast as the wave does at its steepest, 200 pi / 60 s
    fast = shape_at("soak", "ramp_seconds=100,low=50,period=60", users=250, rate=1.0)
    assert ticks(fast, [1000])[0][1] == pytest.approx(200 * 3.14159 / 60, rel=1e-3)


def test_soak_warm_up_leaves_the_ramp_out_of_the_runs_timings():
    shape = shape_at("soak", "ramp_seconds=100,warmup_seconds=120", users=10)
    metrics = shape.runner.environment.athos.metrics
    metrics.timings[Timing.CONNECT_READY].observe(5.0, scenario="s")  # a slow call in the ramp
    ticks(shape, [0, 60, 119])
    assert metrics.warmup_until is None and metrics.timing("connect_ready").count == 1
    ticks(shape, [120])
    assert metrics.warmup_until is not None
    for _ in range(3):
        metrics.timings[Timing.CONNECT_READY].observe(0.2, scenario="s")
    steady = metrics.timing("connect_ready")
    assert steady.count == 3 and steady.max == pytest.approx(0.2, rel=0.01)
    # the exported series is whole: a Prometheus counter never goes back
    assert metrics.timings[Timing.CONNECT_READY].merged().count == 4
    # the warm-up defaults to the ramp
    assert parse_params("soak", "ramp_seconds=30")["warmup_seconds"] == 30


@pytest.mark.parametrize(
    ("shape", "params", "message"),
    [
        ("steps", "stepz=3", "'stepz' is not a parameter of steps"),
        ("steps", "step=ten", "step='ten' is not a number"),
        ("spike", "peak", "'peak' is not key=value"),
        ("capacity", "", "needs gate="),
        ("capacity", "gate=conect_ready.p95<1", "unknown timing 'conect_ready'"),
        ("capacity", "gate=connect_ready.p42<1", "expected TIMING.STAT<SECONDS"),
        ("steps", "step_seconds=0", "step_seconds='0' must be a finite number > 0"),
        ("steps", "steps=0", "steps='0' must be a finite number > 0"),
        ("spike", "peak=-5", "peak='-5' must be a finite number >= 0"),
        ("soak", "ramp_seconds=nan", "ramp_seconds='nan' must be a finite number >= 0"),
        ("steps", "step_users=20", "'step_users' is not a parameter of steps"),
    ],
)
def test_bad_parameters_say_what_is_wrong(shape, params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_params(shape, params)


def test_capacity_search_reports_the_last_good_level():
    hist = LogHistogram()
    params = parse_params("capacity", "start=10,step=10,step_seconds=60,steps=10,gate=connect_ready.p95<1.0")
    search = CapacitySearch(params, lambda: hist)
    # connect→ready grows with load: 0.3 s at 10 users, 0.6 s at 20, 1.4 s at 30
    for step, latency in enumerate([0.3, 0.6, 1.4]):
        assert search.tick(step * 60 + 1, 5.0) == (10 + 10 * step, 5.0)
        for _ in range(50):
            hist.record(latency)
    # an earlier step's slow samples must not leak into a later window, and vice versa
    assert search.tick(180, 5.0) is None
    result = search.verdict()
    assert {k: result[k] for k in ("gate", "last_good_users", "broke_at", "samples", "finished")} == {
        "gate": "connect_ready.p95<1",
        "last_good_users": 20,
        "broke_at": 30,
        "samples": 50,
        "finished": True,
    }
    assert abs(result["value"] - 1.4) < 0.01  # the broken step's own p95, not the whole run's


def test_capacity_judges_a_max_gate_on_the_step_alone():
    """A step's max is its own, not the run's: a slow first step does not mark a faster second one."""
    hist = LogHistogram()
    params = parse_params("capacity", "start=10,step=10,step_seconds=60,steps=2,min_samples=5,gate=connect_ready.max<1")
    search = CapacitySearch(params, lambda: hist)
    for step, latency in enumerate([0.9, 0.4]):
        assert search.tick(step * 60 + 1, 5.0) == (10 + 10 * step, 5.0)
        for _ in range(10):
            hist.record(latency)
    assert search.tick(120, 5.0) is None
    result = search.verdict()
    assert result["last_good_users"] == 20 and result["broke_at"] is None and result["samples"] == 10
    assert result["value"] == pytest.approx(0.4, rel=0.001)


def test_capacity_step_without_enough_samples_breaks_the_search():
    hist = LogHistogram()
    search = CapacitySearch(parse_params("capacity", "min_samples=20,gate=connect_ready.p95<1"), lambda: hist)
    assert search.tick(1, 1.0) == (10, 1.0)
    hist.record(0.1)
    assert search.tick(61, 1.0) is None and search.result["last_good_users"] is None


def test_gate_holds():
    gate = Gate.parse("persona_response.p99<=1.5")
    assert gate.holds(1.5) and not gate.holds(1.51) and str(gate) == "persona_response.p99<=1.5"


def test_no_users_is_never_read_as_one():
    """`-u 0` was `int(opts.num_users or 1)`: one user, silently. Only an unset -u is Locust's 1."""
    assert ticks(shape_at("", "", users=None, rate=None), [0]) == [(1, 1.0)]
    assert ticks(shape_at("", "", users=0), [0]) == [(0, 5.0)]  # refused at start (below), never 1


@pytest.mark.parametrize(
    ("shape", "users", "rate", "message"),
    [
        ("ramp", 0, 1.0, "-u/--users 0: the ramp shape needs at least 1 user (-u 0 would run none)"),
        ("soak", -3, 1.0, "-u/--users -3: the soak shape needs at least 1 user"),
        ("ramp", 5, 0.0, "-r/--spawn-rate 0: must be a number of users per second above 0"),
        ("steps", 5, float("nan"), "-r/--spawn-rate nan: must be a number of users per second above 0"),
    ],
)
def test_no_users_or_no_rate_is_refused(shape, users, rate, message):
    from athos_load.plugin.shapes import check_load

    with pytest.raises(ValueError) as caught:
        check_load(shape, users, rate)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(("shape", "users", "rate"), [("ramp", None, None), ("ramp", 1, 0.5), ("steps", 0, 1.0)])
def test_a_load_the_shape_can_run_is_accepted(shape, users, rate):
    from athos_load.plugin.shapes import check_load

    check_load(shape, users, rate)  # steps reads its own start/step, not -u
