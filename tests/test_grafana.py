"""The grafana/ room: Prometheus config and rules, the dashboard, and every query in them, live.

Three layers:

* ``promtool``: the scrape config, the rules and their unit tests (``rules_test.yml``).
* the dashboard linted as Grafana's dashboard-linter would (templated data source on every panel
  and target, ``$__rate_interval`` in every range, a unit on every panel, counters only inside
  rate/increase, ``$scenario`` on every series that has the label, unique ids, refIds).
* live: a real ``prometheus`` on 127.0.0.1 scrapes an exporter every second, and every dashboard
  query and every recording rule must come back non-empty. The exporter serves
  ``tests/data/metrics_sample.prom`` (every metric of the contract, written with prometheus_client)
  with its counters growing in time, so rates and quantiles are real numbers. ``start_prometheus``
  takes any ``/metrics`` URL, so the same checks run against a real Locust run started with
  ``--athos-metrics-port`` (see ``check_live_queries``).

Skipped, with the reason, only when ``promtool``/``prometheus`` are not installed (``.ci/run``
installs them).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.net import free_port

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "athos-load.json"
PROM_CONFIG = GRAFANA / "prometheus" / "prometheus.yml"
RULES = GRAFANA / "prometheus" / "rules.yml"
RULES_TEST = GRAFANA / "prometheus" / "rules_test.yml"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "athos.yml"
FIXTURE = Path(__file__).parent / "data" / "metrics_sample.prom"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NOT_INSTALLED = "not installed (apt-get install prometheus; .ci/run installs it)"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"promtool {NOT_INSTALLED}")
needs_prometheus = pytest.mark.skipif(
    PROMTOOL is None or PROMETHEUS is None, reason=f"prometheus/promtool {NOT_INSTALLED}"
)

# -- the metrics contract (what the tool exports on /metrics) ---------------------------------------

SUB_SECOND = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)


@dataclass(frozen=True)
class Family:
    type: str  # counter | gauge | histogram
    labels: frozenset[str]
    buckets: tuple[float, ...] = ()


def _family(kind: str, *labels: str, buckets: tuple[float, ...] = ()) -> Family:
    return Family(kind, frozenset(labels), buckets)


# Names as exposed: counters with their _total, histograms by their base name.
CONTRACT: dict[str, Family] = {
    "athos_connect_ready_seconds": _family("histogram", "scenario", buckets=SUB_SECOND),
    "athos_persona_response_seconds": _family("histogram", "scenario", buckets=SUB_SECOND),
    "athos_token_mint_seconds": _family(
        "histogram", "scenario", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
    ),
    "athos_reconnect_seconds": _family("histogram", "scenario", buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30)),
    "athos_end_to_score_seconds": _family("histogram", "scenario", buckets=(1, 2, 5, 10, 15, 30, 60, 120, 300, 600)),
    "athos_audio_send_lag_seconds": _family("histogram", buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25, 1)),
    "athos_sessions_active": _family("gauge", "scenario"),
    "athos_sessions_total": _family("counter", "scenario", "outcome"),
    "athos_errors_total": _family("counter", "code"),
    "athos_reconnects_total": _family("counter", "scenario"),
    "athos_scores_missing_total": _family("counter", "scenario"),
    "athos_scores_total": _family("counter", "scenario"),
    "athos_scores_failed_total": _family("counter", "scenario", "reason"),
    "athos_calls_redeemed_total": _family("counter", "scenario"),
    "athos_loadgen_users": _family("gauge"),
    "athos_loadgen_cpu_seconds_total": _family("counter", "worker"),
    "athos_loadgen_memory_bytes": _family("gauge", "worker"),
    "athos_loadgen_loop_lag_seconds": _family(
        "histogram", "worker", buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
    ),
    "athos_loadgen_saturated": _family("gauge", "worker"),
    # what the rep hears
    "athos_time_to_first_word_seconds": _family("histogram", "scenario", buckets=SUB_SECOND),
    "athos_endpointing_seconds": _family("histogram", "scenario", buckets=SUB_SECOND),
    "athos_response_seconds": _family("histogram", "scenario", buckets=SUB_SECOND),
    "athos_speech_onset_seconds": _family("histogram", "scenario", buckets=SUB_SECOND),
    "athos_persona_audio_lead_seconds": _family(
        "histogram", "scenario", buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)
    ),
    "athos_barge_in_seconds": _family("histogram", "scenario", buckets=SUB_SECOND),
    "athos_barge_ins_ignored_total": _family("counter", "scenario"),
    "athos_setup_failed_total": _family("counter", "scenario"),
    "athos_persona_audio_gap_seconds": _family("histogram", "scenario", buckets=(0.04, 0.06, 0.1, 0.2, 0.5, 1, 2, 5)),
    "athos_persona_audio_jitter_seconds": _family(
        "histogram", "scenario", buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
    ),
    "athos_persona_audio_seconds_total": _family("counter", "scenario"),
    "athos_persona_underruns_total": _family("counter", "scenario"),
    "athos_persona_dead_air_seconds_total": _family("counter", "scenario"),
    "athos_transcript_turns_total": _family("counter", "scenario"),
    "athos_transcript_missing_total": _family("counter", "scenario"),
    "athos_transcript_misaligned_total": _family("counter", "scenario"),
    "athos_transcript_words_total": _family("counter", "scenario"),
    "athos_transcript_word_errors_total": _family("counter", "scenario"),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
COUNTER_SUFFIXES = ("_total", *HISTOGRAM_SUFFIXES)


def series_family(series: str) -> tuple[str, Family] | None:
    """``athos_x_seconds_bucket`` -> (``athos_x_seconds``, its family); None if not in the contract."""
    if series in CONTRACT:
        return series, CONTRACT[series]
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and CONTRACT.get(base, Family("", frozenset())).type == "histogram":
            return base, CONTRACT[base]
    return None


def contract_problems(exposition: str) -> list[str]:
    """What a /metrics text (the fixture, or a real run's) gets wrong against ``CONTRACT``."""
    problems = []
    seen: dict[str, Any] = {}
    for fam in text_string_to_metric_families(exposition):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        seen[name] = fam
        if any(s.name.endswith("_created") for s in fam.samples):
            problems.append(f"{name}: has _created series")
    for name, want in CONTRACT.items():
        fam = seen.get(name)
        if fam is None:
            problems.append(f"{name}: missing")
            continue
        if fam.type != want.type:
            problems.append(f"{name}: type {fam.type}, want {want.type}")
        for sample in fam.samples:
            labels = set(sample.labels) - {"le"}
            if labels != want.labels:
                problems.append(f"{sample.name}: labels {sorted(labels)}, want {sorted(want.labels)}")
                break
        if want.buckets:
            les = {float(s.labels["le"]) for s in fam.samples if s.name.endswith("_bucket")}
            if les != {*want.buckets, math.inf}:
                problems.append(f"{name}: buckets {sorted(les)}, want {sorted(want.buckets)} and +Inf")
    return problems


# -- the dashboard and the rules, as data -----------------------------------------------------------

DS_REF = {"type": "prometheus", "uid": "${datasource}"}
# Grafana unit ids (a subset of grafana-data's valueFormats, the ones that fit this tool).
UNITS = {
    "none", "short", "percent", "percentunit", "s", "ms", "µs", "ns", "m", "h", "d", "dtdurations",
    "bytes", "decbytes", "ops", "reqps", "rps", "opm", "rpm", "cps", "cpm", "hertz", "bool", "bool_yes_no",
}  # fmt: skip
# Substituted when a dashboard query is sent to Prometheus directly (Grafana would): the live
# Prometheus scrapes every 1 s, and Grafana's $__rate_interval is at least 4 scrape intervals.
LIVE_SCRAPE_SECONDS = 1
RATE_INTERVAL = f"{4 * LIVE_SCRAPE_SECONDS}s"


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every target of every panel."""
    return [
        (f"panel {p['id']} {p['title']!r} target {t.get('refId')}", t["expr"])
        for p in query_panels(dashboard)
        for t in p["targets"]
    ]


def load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def for_prometheus(expr: str) -> str:
    """A dashboard query as Grafana would send it (every scenario selected)."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("${scenario}", ".*").replace("$scenario", ".*")


# -- a PromQL linter good enough for these files ------------------------------------------------------

# A metric selector: the name, its {matchers}, its [range]. Recording rules (athos:...) are skipped.
SELECTOR = re.compile(r"(?<![\w:])(athos_[A-Za-z0-9_]+)(?![\w:(])\s*(\{[^}]*\})?\s*(\[[^\]]*\])?")
SCENARIO_MATCHER = re.compile(r'scenario\s*=~\s*"\$(scenario|\{scenario\})"')
RATE_CALL = re.compile(r"\b(rate|irate|increase)\s*\(\s*$")


def lint_expr(expr: str, *, dashboard: bool = True) -> list[str]:
    """Problems in one query: unknown metrics, counters outside rate/irate/increase, ranges other
    than $__rate_interval (dashboard only), series with a scenario label not filtered by $scenario
    (dashboard only)."""
    problems = []
    if dashboard:
        for rng in re.findall(r"\[([^\]]*)\]", expr):
            if rng.strip() != "$__rate_interval":
                problems.append(f"range [{rng}] is not [$__rate_interval]")
    selectors = list(SELECTOR.finditer(expr))
    if not selectors and "athos" not in expr:
        problems.append("queries no athos_ metric")
    for m in selectors:
        name, matchers, rng = m.group(1), m.group(2) or "", m.group(3)
        known = series_family(name)
        if known is None:
            problems.append(f"{name}: not a metric of the contract")
            continue
        base, family = known
        if name.endswith(COUNTER_SUFFIXES) and not (rng and RATE_CALL.search(expr[: m.start()])):
            problems.append(f"{name}: counter outside rate/irate/increase")
        if dashboard and "scenario" in family.labels and not SCENARIO_MATCHER.search(matchers):
            problems.append(f'{name}: has a scenario label but no scenario=~"$scenario"')
    return problems


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(athos_errors_total)", "counter outside"),
        ("sum(rate(athos_errors_total[5m]))", "not [$__rate_interval]"),
        ("sum(rate(athos_reconnects_total[$__rate_interval]))", "no scenario"),
        ('athos_connect_ready_seconds_count{scenario=~"$scenario"}', "counter outside"),
        ("sum(rate(athos_nonsense_total[$__rate_interval]))", "not a metric"),
        ("avg_over_time(athos_loadgen_users[1m])", "not [$__rate_interval]"),
    ],
)
def test_linter_catches(expr: str, problem: str) -> None:
    assert any(problem in p for p in lint_expr(expr)), lint_expr(expr)


def test_linter_passes_good_queries() -> None:
    ok = [
        'histogram_quantile(0.95, sum by (le) (rate(athos_connect_ready_seconds_bucket{scenario=~"$scenario"}'
        "[$__rate_interval])))",
        "sum by (worker) (rate(athos_loadgen_cpu_seconds_total[$__rate_interval]))",
        "max by (worker) (athos_loadgen_saturated)",
    ]
    for expr in ok:
        assert lint_expr(expr) == [], expr


# -- the dashboard lint ----------------------------------------------------------------------------


def test_dashboard_model() -> None:
    d = load_dashboard()
    assert d["uid"] == "athos-load" and d["title"]
    assert 36 <= d["schemaVersion"] <= 41
    assert d["id"] is None  # provisioned dashboards must not carry a database id
    assert query_panels(d), "no panels"


def test_datasource_variable() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds is not None, "no `datasource` template variable"
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds.get("label") == "Data source"
    assert [v for v in variables.values() if v["type"] == "datasource"] == [ds]


def test_scenario_variable() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    sc = variables.get("scenario")
    assert sc is not None, "no `scenario` template variable"
    assert sc["type"] == "query" and sc["datasource"] == DS_REF
    assert re.fullmatch(r"label_values\(\s*athos_sessions_active\s*,\s*scenario\s*\)", sc["definition"])
    query = sc["query"]["query"] if isinstance(sc["query"], dict) else sc["query"]
    assert query == sc["definition"]
    assert sc["multi"] and sc["includeAll"] and sc["allValue"] == ".*"
    assert sc["refresh"] == 2, "query variables refresh on time-range change (dashboard-linter)"


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    bad = []
    for p in query_panels(load_dashboard()):
        if p.get("datasource") != DS_REF:
            bad.append(f"panel {p['id']} {p['title']!r}: {p.get('datasource')}")
        assert p.get("targets"), f"panel {p['id']} {p['title']!r} has no targets"
        bad += [f"panel {p['id']} target {t.get('refId')}: {t.get('datasource')}"
                for t in p["targets"] if t.get("datasource") != DS_REF]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_every_panel_has_a_unit_title_and_description() -> None:
    bad = []
    for p in query_panels(load_dashboard()):
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in UNITS:
            bad.append(f"panel {p['id']} {p['title']!r}: unit {unit!r}")
        if not p.get("title") or not p.get("description"):
            bad.append(f"panel {p['id']}: title and description required")
    assert not bad, "\n".join(bad)


def test_panel_ids_unique_and_refids_present() -> None:
    d = load_dashboard()
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for p in query_panels(d):
        refs = [t.get("refId") for t in p["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), f"panel {p['id']} {p['title']!r}: refIds {refs}"
        assert all(t.get("expr") for t in p["targets"]), f"panel {p['id']}: empty expr"


def test_dashboard_queries_lint_clean() -> None:
    """$__rate_interval everywhere, counters only in rate/increase, $scenario wherever it applies."""
    bad = [f"{where}: {problem}\n    {expr}" for where, expr in dashboard_exprs(load_dashboard())
           for problem in lint_expr(expr)]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_dashboard_covers_the_contract() -> None:
    text = json.dumps([e for _, e in dashboard_exprs(load_dashboard())])
    missing = [name for name in CONTRACT if name not in text]
    assert not missing, f"metrics no panel shows: {missing}"


def test_rules_lint_clean() -> None:
    rules = load_rules()
    bad = [f"{r.get('record') or r.get('alert')}: {p}" for r in rules for p in lint_expr(r["expr"], dashboard=False)
           if p != "queries no athos_ metric"]  # fmt: skip
    assert not bad, "\n".join(bad)
    for rule in rules:
        if "record" in rule:
            assert re.fullmatch(r"athos:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
        else:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {
        "AthosConnectReadyP95High", "AthosReconnectRateHigh", "AthosEndToScoreP95High", "AthosScoresMissing",
        "AthosConnectReadySLOBurnRate", "AthosLoadGeneratorSaturated",
    } <= alerts  # fmt: skip


def test_provisioning_matches_the_scrape_config() -> None:
    prom = yaml.safe_load(PROM_CONFIG.read_text())
    assert prom["global"]["scrape_interval"] == "5s"
    jobs = prom["scrape_configs"]
    # One active job: in distributed mode only the master serves /metrics, and scraping two
    # endpoints of the same run would double every sum.
    assert len(jobs) == 1 and jobs[0]["static_configs"][0]["targets"] == ["127.0.0.1:9646"]
    assert "rules.yml" in prom["rule_files"]
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"], "$__rate_interval needs it"
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_fixture_matches_the_contract() -> None:
    assert contract_problems(FIXTURE.read_text()) == []


# -- promtool ----------------------------------------------------------------------------------------


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=30, cwd=ROOT)


@needs_promtool
def test_promtool_check_config() -> None:
    r = promtool("check", "config", str(PROM_CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    r = promtool("test", "rules", str(RULES_TEST))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_check_metrics_fixture() -> None:
    r = promtool("check", "metrics", stdin=FIXTURE.read_text())
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL: promtool parses them as recording rules."""
    exprs = dashboard_exprs(load_dashboard())
    rules = [{"record": f"athos:dashboard_query:{i}", "expr": for_prometheus(e)} for i, (_, e) in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


# -- live: a real Prometheus scraping an exporter ----------------------------------------------------

START_DEADLINE = 15.0  # seconds for an exporter or Prometheus to answer
DATA_DEADLINE = 20.0  # seconds for enough samples / rule evaluations
LIFETIME = 120  # seconds: a server left behind by a killed pytest dies by itself

# Serves a Prometheus text file on 127.0.0.1:PORT/metrics. Counter and histogram samples grow
# linearly (as if the file's values had accumulated over ACCUMULATED seconds), gauges stay put,
# so rates, quantiles and ratios over the fixture are finite numbers, like in a real run.
FIXTURE_EXPORTER = r"""
import http.server, sys, time
path, port = sys.argv[1], int(sys.argv[2])
ACCUMULATED = 600.0
LINES = open(path, encoding="utf-8").read().splitlines()
T0 = time.monotonic()

def render():
    k = 1.0 + (time.monotonic() - T0) / ACCUMULATED
    out, cumulative = [], False
    for line in LINES:
        if line.startswith("# TYPE "):
            cumulative = line.split()[3] in ("counter", "histogram", "summary")
        elif line and not line.startswith("#") and cumulative:
            series, value = line.rsplit(" ", 1)
            line = f"{series} {float(value) * k!r}"
        out.append(line)
    return ("\n".join(out) + "\n").encode()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        body = render()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def bounded(cmd: list[str]) -> list[str]:
    """``cmd`` under coreutils ``timeout`` when available: it cannot outlive LIFETIME."""
    wrapper = shutil.which("timeout")
    return [wrapper, "--kill-after=5", str(LIFETIME), *cmd] if wrapper else cmd


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until_answers(url: str, proc: subprocess.Popen[bytes], what: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}")
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {deadline}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_fixture_exporter(fixture: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The fixture exporter as a subprocess (not a thread: conftest monkey-patches with gevent)."""
    port = free_port()
    proc = subprocess.Popen(bounded([sys.executable, "-c", FIXTURE_EXPORTER, str(fixture), str(port)]))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until_answers(url, proc, "fixture exporter", START_DEADLINE)
    except Exception:
        stop(proc)
        raise
    return proc, url


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    job: str

    def api(self, path: str, **params: str) -> dict[str, Any]:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        data = json.loads(body)
        assert status == 200 or "error" in data, body[:500]
        return data

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def wait_for(self, what: str, predicate: Any, deadline: float = DATA_DEADLINE) -> Any:
        """Poll ``predicate()`` until it returns something truthy; fail with ``what`` at the deadline."""
        end = time.monotonic() + deadline
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"{what}: not within {deadline}s")
            time.sleep(0.25)


def start_prometheus(target_url: str, workdir: Path, rule_files: Iterable[Path] = (RULES,)) -> Prometheus:
    """A real Prometheus on a free loopback port scraping ``target_url`` (``http://host:port/metrics``,
    e.g. a Locust run with ``--athos-metrics-port``) every LIVE_SCRAPE_SECONDS, evaluating
    ``rule_files`` as often; its storage in ``workdir``. Stop it with ``stop(prom.proc)``."""
    target = urllib.parse.urlsplit(target_url)
    job = "athos-load"
    config = {
        "global": {
            "scrape_interval": f"{LIVE_SCRAPE_SECONDS}s",
            "scrape_timeout": f"{LIVE_SCRAPE_SECONDS}s",
            "evaluation_interval": f"{LIVE_SCRAPE_SECONDS}s",
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "scheme": target.scheme,
                "metrics_path": target.path or "/metrics",
                "static_configs": [{"targets": [target.netloc]}],
            }
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    assert PROMETHEUS is not None
    cmd = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(bounded(cmd), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/-/ready", proc, "prometheus", START_DEADLINE)
    except Exception:
        stop(proc)
        raise RuntimeError((workdir / "prometheus.log").read_text(errors="replace")[-2000:]) from None
    return Prometheus(proc, url, job)


def wait_for_samples(prom: Prometheus, samples: int = 5) -> None:
    """Enough scrapes that a [$__rate_interval] window holds several samples of every series."""

    def enough() -> bool:
        result = prom.query(f'count_over_time(up{{job="{prom.job}"}}[1m])')["data"]["result"]
        up = prom.query(f'up{{job="{prom.job}"}}')["data"]["result"]
        return bool(result and up) and float(result[0]["value"][1]) >= samples and up[0]["value"][1] == "1"

    prom.wait_for(f"{samples} successful scrapes of {prom.job}", enough)


def query_problem(prom: Prometheus, where: str, expr: str, *, finite: bool) -> str | None:
    promql = for_prometheus(expr)
    resp = prom.query(promql)
    if resp.get("status") != "success":
        return f"{where}: {resp.get('error')}\n    {promql}"
    result = resp["data"]["result"]
    if not result:
        return f"{where}: empty result\n    {promql}"
    if finite and not all(math.isfinite(float(r["value"][1])) for r in result):
        return f"{where}: non-finite {[r['value'][1] for r in result]}\n    {promql}"
    return None


def check_live_queries(
    prom: Prometheus, exprs: Iterable[tuple[str, str]], *, finite: bool, retry_for: float = 8.0
) -> list[str]:
    """Query every expression; the problems: errors, empty results, and (``finite``) NaN or ±Inf.

    A query that fails is retried for ``retry_for`` seconds (a scrape lost on a busy machine can
    leave a short window with one sample). Against the fixture every value is finite; in a real
    run some honestly are not (no reconnect yet: its quantiles are NaN), so pass ``finite=False``."""
    pending = list(exprs)
    end = time.monotonic() + retry_for
    while True:
        failed = [(w, e, p) for w, e in pending if (p := query_problem(prom, w, e, finite=finite))]
        if not failed or time.monotonic() > end:
            return [p for _, _, p in failed]
        pending = [(w, e) for w, e, _ in failed]
        time.sleep(0.5)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.skip(f"prometheus/promtool {NOT_INSTALLED}")
    exporter, url = start_fixture_exporter(FIXTURE)
    try:
        prom = start_prometheus(url, tmp_path_factory.mktemp("prometheus"))
        try:
            wait_for_samples(prom)
            yield prom
        finally:
            stop(prom.proc)
    finally:
        stop(exporter)


@needs_prometheus
def test_live_dashboard_queries(live: Prometheus) -> None:
    problems = check_live_queries(live, dashboard_exprs(load_dashboard()), finite=True)
    assert not problems, "\n".join(problems)


@needs_prometheus
def test_live_recording_rules(live: Prometheus) -> None:
    records = [(r["record"], r["expr"]) for r in load_rules() if "record" in r]
    problems = check_live_queries(live, records, finite=True)
    assert not problems, "\n".join(problems)
    # ...and Prometheus itself records them.
    recorded = [(name, name) for name, _ in records]
    live.wait_for(
        "every recording rule recorded", lambda: not check_live_queries(live, recorded, finite=True, retry_for=0)
    )


@needs_prometheus
def test_live_rules_evaluate_without_errors(live: Prometheus) -> None:
    def healths() -> dict[str, str] | None:
        rules = [r for g in live.api("rules")["data"]["groups"] for r in g["rules"]]
        names = {r["name"]: r["health"] for r in rules}
        return names if rules and all(h != "unknown" for h in names.values()) else None

    health = live.wait_for("every rule evaluated", healths)
    assert len(health) == len(load_rules())
    bad = {name: h for name, h in health.items() if h != "ok"}
    assert not bad, bad


@needs_prometheus
def test_live_alerts_match_the_fixture(live: Prometheus) -> None:
    """The fixture has one saturated worker (w1) and missing scores, and healthy latencies."""

    def active() -> dict[str, list[dict[str, str]]] | None:
        alerts = live.api("alerts")["data"]["alerts"]
        by_name: dict[str, list[dict[str, str]]] = {}
        for a in alerts:
            by_name.setdefault(a["labels"]["alertname"], []).append(a["labels"])
        want = {"AthosLoadGeneratorSaturated", "AthosScoresMissing"}
        return by_name if want <= set(by_name) else None

    alerts = live.wait_for("saturation and missing-score alerts", active)
    assert [a["worker"] for a in alerts["AthosLoadGeneratorSaturated"]] == ["w1"]
    assert set(alerts) == {"AthosLoadGeneratorSaturated", "AthosScoresMissing"}, alerts


if __name__ == "__main__":  # pragma: no cover - manual: lint and query against a running Locust
    # python tests/test_grafana.py http://127.0.0.1:9646/metrics
    target = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9646/metrics"
    print("\n".join(contract_problems(http_get(target)[1].decode())) or "contract: ok")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        prom = start_prometheus(target, Path(tmp))
        try:
            wait_for_samples(prom)
            exprs = dashboard_exprs(load_dashboard()) + [
                (r["record"], r["expr"]) for r in load_rules() if "record" in r
            ]
            print("\n".join(check_live_queries(prom, exprs, finite=False)) or "queries: ok")
        finally:
            stop(prom.proc)


@needs_prometheus
def test_live_queries_against_a_real_locust_run(tmp_path: Path) -> None:
    """A real Prometheus scrapes a real headless Locust run (built-in simulator, faults injected so
    reconnects and errors happen): the exposition meets the contract and passes promtool, and every
    dashboard query and recording rule returns data."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    locust = subprocess.Popen(
        bounded(
            [
                sys.executable, "-m", "locust", "-f", str(root / "locustfile.py"),
                "--headless", "-u", "8", "-r", "8", "-t", "45s",
                "--athos-scenario", "scenarios/smoke",
                "--athos-metrics-port", str(port),
                "--athos-sim-args", "--drop-after 2 --max-calls 6 --score-delay fixed:0.5",
                "--athos-drain-timeout", "2",
            ]
        ),
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until_answers(url, locust, "locust /metrics", time.monotonic() + 30)
        prom = start_prometheus(url, tmp_path / "prometheus")
        try:
            wait_for_samples(prom, samples=8)
            exposition = http_get(url)[1].decode()
            assert not contract_problems(exposition)
            assert promtool("check", "metrics", stdin=exposition).returncode == 0
            exprs = dashboard_exprs(load_dashboard()) + [
                (r["record"], r["expr"]) for r in load_rules() if "record" in r
            ]
            problems = check_live_queries(prom, exprs, finite=False, retry_for=20.0)
            assert not problems, "\n".join(problems)
        finally:
            stop(prom.proc)
    finally:
        stop(locust)
