"""Alerts and the Grafana dashboard: PromQL parses (promtool), alerts behave (promtool test rules), and
every series they use exists in the code's metric registry with the labels they select on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from _deploy_support import CHART, run
from prometheus_client.metrics import MetricWrapperBase

from cuvis_cluster.common.telemetry import GatewayMetrics, WorkerMetrics, metric_names

ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yaml")
DASHBOARD = CHART / "dashboards" / "cuvis-ai.json"
# Series Prometheus makes itself, not the code.
SYNTHETIC = {"up"}
# Labels the scrape adds (ServiceMonitor target labels) on top of the code's own.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${namespace}": ".*",
    "$namespace": ".*",
}
KEYWORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def series_labels() -> dict[str, set[str]]:
    """Every exported sample name -> the label names the code gives it."""
    out: dict[str, set[str]] = {}
    for metrics in (GatewayMetrics(), WorkerMetrics()):
        for value in vars(metrics).values():
            if isinstance(value, MetricWrapperBase):
                (family,) = value.describe()
                labels = set(value._labelnames)
                for suffix in _SUFFIXES[family.type]:
                    out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metrics_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, matchers, grouping and ranges removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", s):
        if s[match.end() :].lstrip().startswith("(") or match.group(0).lower() in KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def labels_in(expr: str) -> set[str]:
    """Label names an expression matches on or groups by."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", s):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        labels |= {w.strip() for w in body.split(",") if w.strip()}
    return labels


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel target, nested panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return out


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def check_usage(where: str, expr: str, known: dict[str, set[str]]) -> list[str]:
    problems = []
    names = metrics_in(expr)
    if not names:
        problems.append(f"{where}: selects no metric: {expr}")
    unknown = names - set(known) - SYNTHETIC
    if unknown:
        problems.append(f"{where}: metrics the code does not export: {sorted(unknown)}")
    allowed = set(TARGET_LABELS)
    for name in names & set(known):
        allowed |= known[name]
    if not names & set(known):
        allowed = TARGET_LABELS | {"job"}
    stray = labels_in(expr) - allowed
    if stray:
        problems.append(f"{where}: labels none of {sorted(names)} has: {sorted(stray)}")
    return problems


# ---------------------------------------------------------------------------------------- self-checks


def test_extraction_helpers():
    expr = (
        "histogram_quantile(0.99, sum by (method, le) "
        '(rate(cuvis_gateway_rpc_duration_seconds_bucket{code!="OK"}[5m]))) / on (pod) up > 1e-4'
    )
    assert metrics_in(expr) == {"cuvis_gateway_rpc_duration_seconds_bucket", "up"}
    assert labels_in(expr) == {"method", "le", "code", "pod"}
    assert set(series_labels()) == metric_names()


def test_promtool_catches_a_broken_dashboard_expression(tmp_path, promtool):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}]})
    )
    assert run([promtool, "check", "rules", str(rules)]).returncode != 0


# ---------------------------------------------------------------------------------------- alerts


def test_alert_rules_pass_promtool_check(promtool):
    proc = run([promtool, "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_alert_rules_pass_promtool_unit_tests(promtool):
    proc = run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_test_case():
    fired = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
    alerts = {r["alert"] for r in alert_rules()}
    assert alerts - fired == set(), "alerts without a test case that fires them"
    required = {
        "CuvisNoLiveWorkers",
        "CuvisWorkerDown",
        "CuvisHighErrorRatio",
        "CuvisRedisDown",
        "CuvisWorkerDeviceMemoryHigh",
        "CuvisPlacementFailures",
    }
    assert required <= alerts


def test_alerts_use_only_exported_metrics_and_labels():
    known = series_labels()
    problems = []
    for rule in alert_rules():
        problems += check_usage(rule["alert"], rule["expr"], known)
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert {"summary", "description"} <= set(rule["annotations"])
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------- dashboard


def test_dashboard_expressions_parse(tmp_path, promtool):
    exprs = dashboard_exprs()
    rules = [{"record": f"dashboard:expr_{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_dashboard_uses_only_exported_metrics_and_labels():
    known = series_labels()
    problems = []
    for where, expr in dashboard_exprs():
        problems += check_usage(where, substitute(expr), known)
    dashboard = json.loads(DASHBOARD.read_text())
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.match(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
            assert metric and metric.group(1) in known, variable["definition"]
    assert not problems, "\n".join(problems)


def test_dashboard_shows_every_exported_metric():
    """Each metric family of the code has a panel (build info aside)."""
    used = set()
    for _, expr in dashboard_exprs():
        used |= metrics_in(substitute(expr))
    families = {re.sub(r"_(total|created|bucket|sum|count|info)$", "", n) for n in metric_names()}
    shown = {re.sub(r"_(total|created|bucket|sum|count|info)$", "", n) for n in used}
    missing = {f for f in families - shown if not f.endswith("_build")}
    assert not missing, f"metrics without a panel: {sorted(missing)}"


@pytest.mark.parametrize(
    ("topic", "pattern"),
    [
        ("request rate per method", r"sum by \(method\) \(rate\(cuvis_(gateway|worker)_rpc_requests_total"),
        (
            "errors per method",
            r'sum by \(method, code\) \(rate\(cuvis_(gateway|worker)_rpc_requests_total\{[^}]*code!="OK"',
        ),
        (
            "latency per method",
            r"histogram_quantile\(0\.99, sum by \(method, le\) \(rate\(cuvis_(gateway|worker)_rpc_duration",
        ),
        ("sessions per worker", r"by \(worker\) \(cuvis_gateway_worker_sessions"),
        ("live and draining workers", r"by \(state\) \(cuvis_gateway_workers"),
        ("training runs", r"cuvis_worker_training_runs_total"),
        ("inference latency", r"cuvis_worker_inference_duration_seconds_bucket"),
        ("device memory", r"cuvis_worker_device_memory_bytes"),
        ("redis latency", r"cuvis_(gateway|worker)_redis_duration_seconds_bucket"),
        ("redis errors", r"cuvis_(gateway|worker)_redis_errors_total"),
        ("gateway bytes per second", r"rate\(cuvis_gateway_rpc_(received|sent)_bytes_total"),
    ],
)
def test_dashboard_has_the_required_panels(topic, pattern):
    assert any(re.search(pattern, expr) for _, expr in dashboard_exprs()), topic


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = []

    def walk(panels):
        for panel in panels:
            ids.append(panel["id"])
            if panel["type"] != "row":
                assert panel["targets"], panel["title"]
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
                assert panel.get("description"), panel["title"]
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert dashboard["uid"] == "cuvis-ai" and dashboard["id"] is None
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace"}
